"""Bad input, generated (hypothesis): every malformed LaMP file is a LampFormatError naming the
file (and the record and field where there is one), or a counted, reported skip; never another
exception, never a silent drop."""

import json
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tapper_jax.data import lamp  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20)
# Records that are nearly right: each field present, absent, or of a wrong type.
field = st.one_of(st.none(), st.text(max_size=12), st.integers(), st.lists(st.integers(),
                                                                           max_size=2))
date = st.one_of(st.none(), st.sampled_from(["2020-01-02", "2019-12-31 10:00:00", "2018",
                                             "not a date", "2020-13-45", "", "2020/02/03"]),
                 st.integers(-5, 3000))
record = st.fixed_dictionaries({}, optional={"id": st.one_of(st.text(max_size=3), st.integers(0, 5)),
                                             "date": date, "description": field, "tag": field})


def _write(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


@SETTINGS
@given(data=json_values)
def test_any_json_is_read_or_named_as_bad(tmp_path, data):
  path = str(tmp_path / "dev_questions.json")
  _write(path, data)
  try:
    lamp.read_questions(path, "LaMP_2M")
  except lamp.LampFormatError as e:
    assert path in str(e)


@SETTINGS
@given(profile=st.lists(record, max_size=8))
def test_profiles_keep_or_count_every_record(tmp_path, profile):
  path = str(tmp_path / "dev_questions.json")
  _write(path, [{"id": "q1", "input": "description: x", "profile": profile}])
  report = lamp.Report(path)
  try:
    (q,) = lamp.read_questions(path, "LaMP_2M", report=report)
  except lamp.LampFormatError as e:  # a record missing its id or a field: named
    assert path in str(e) and "profile[" in str(e) and "field" in str(e)
    return
  skipped = sum(v for k, v in report.counts.items() if k.startswith("profile_record"))
  assert len(q.profile) + skipped == len(profile)  # nothing dropped silently
  assert [r.day for r in q.profile] == sorted(r.day for r in q.profile)


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.binary(min_size=1, max_size=4))
def test_truncated_or_non_utf8_files_are_named(tmp_path, cut, junk):
  path = str(tmp_path / "dev_questions.json")
  good = json.dumps([{"id": "q1", "input": "description: x", "profile": [
      {"id": "r1", "date": "2020-01-01", "description": "d", "tag": "comedy"}]}]).encode()
  for raw in (good[: cut % len(good)], good[:10] + b"\xff\xfe" + junk + good[10:]):
    with open(path, "wb") as f:
      f.write(raw)
    with pytest.raises(lamp.LampFormatError, match="dev_questions.json"):
      lamp.read_questions(path, "LaMP_2M")


def test_duplicates_and_missing_golds(tmp_path):
  q = {"id": "q1", "input": "description: x", "profile": [
      {"id": "r1", "date": "2020-01-01", "description": "d", "tag": "comedy"},
      {"id": "r1", "date": "2020-01-02", "description": "e", "tag": "comedy"}]}
  _write(tmp_path / "dev_questions.json", [q, dict(q, id="q2")])
  _write(tmp_path / "dev_outputs.json", {"task": "LaMP_2M", "golds": [{"id": "q1", "output": "comedy"}]})
  qs, report = lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  assert [x.id for x in qs] == ["q1"]
  assert report.counts["question_without_gold"] == 1
  assert report.counts["profile_record_duplicate_id"] == 2
  with pytest.raises(lamp.LampFormatError, match=r"question\[0\] \(id q1\) profile\[1\]: "
                     "duplicate record id 'r1'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev", strict=True)
  single = dict(q, profile=q["profile"][:1])
  _write(tmp_path / "dev_questions.json", [single, dict(single, id="q2")])
  with pytest.raises(lamp.LampFormatError, match="no gold for question id 'q2'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev", strict=True)
  _write(tmp_path / "dev_questions.json", [q, q])
  with pytest.raises(lamp.LampFormatError, match="duplicate question id 'q1'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_a_history_of_100k_records_reads_sorted(tmp_path):
  n = 100_000
  profile = [{"id": str(i), "date": f"{2000 + (i * 7919) % 20}-01-01", "description": f"d{i}",
              "tag": "comedy"} for i in range(n)]
  _write(tmp_path / "dev_questions.json", [{"id": "q", "input": "description: x",
                                            "profile": profile}])
  (q,) = lamp.read_questions(str(tmp_path / "dev_questions.json"), "LaMP_2M")
  assert len(q.profile) == n
  assert all(a.day <= b.day for a, b in zip(q.profile, q.profile[1:]))


def test_a_50_mb_text_is_cut_before_tokenizing(model_cache):
  import time
  import numpy as np
  from tapper_jax.data.prompts import PromptFormat
  from tapper_jax.models import Tokenizer, registry
  from tapper_jax.tapper.bank import embed_texts
  try:
    tok = Tokenizer.from_pretrained(registry.resolve("smollm2-135m-instruct"))
  except FileNotFoundError as e:
    pytest.skip(str(e))
  huge = "the long article goes on " * 2_000_000  # 50 MB
  head = "Which category? article: "
  prompts = PromptFormat(tok, 176, chat=True)
  t0 = time.time()
  ids, shortened = prompts.encode(head + huge, len(head))
  small, _ = prompts.encode(head + huge[:20_000], len(head))
  assert shortened and len(ids) <= 176 and ids == small  # the same prompt as a short prefix
  emb = np.random.RandomState(0).randn(tok.vocab_size, 4).astype(np.float32)
  z = embed_texts([huge, huge[:5_000]], tok, emb, max_tokens=128)
  np.testing.assert_array_equal(z[0], z[1])  # the first 128 tokens are the same
  assert time.time() - t0 < 30  # tokenizing 50 MB alone takes ~30 s on this CPU


source_value = st.one_of(st.none(), st.text(max_size=10), st.integers(-3, 7),
                         st.floats(allow_nan=False, allow_infinity=False, width=32))
source_row = st.one_of(
    st.fixed_dictionaries({}, optional={"user": source_value, "ts": st.one_of(date, source_value),
                                        "body": source_value, "stars": source_value,
                                        "rid": source_value}),
    json_values)  # any JSON line at all, not only objects


@SETTINGS
@given(rows=st.lists(source_row, max_size=12), garbage=st.booleans())
def test_the_converter_keeps_or_counts_every_source_row(tmp_path, rows, garbage):
  from tapper_jax.data.convert import SourceSpec, collect_items
  path = tmp_path / "src.jsonl"
  lines = [json.dumps(r) for r in rows] + (["{not json"] if garbage else [])
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  spec = SourceSpec("t", "LaMP_3", "src.jsonl", "jsonl", user_field="user", date_field="ts",
                    fields={"text": "{body}", "score": "{stars}"}, id_field="rid",
                    target_transform="stars")
  report = lamp.Report("src")
  try:
    users = collect_items(str(tmp_path), spec, report)
  except lamp.LampFormatError as e:  # a row that lacks a mapped field: named by line and field
    assert "src.jsonl:" in str(e) and "field" in str(e)
    return
  kept = sum(len(v) for v in users.values())
  assert kept + sum(report.counts.values()) == len(lines)  # every row kept or counted
