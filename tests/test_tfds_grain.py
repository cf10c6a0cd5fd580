"""TFDS ArrayRecord builder for LaMP folders and the grain pipeline (state save/restore)."""

import json

import numpy as np
import pytest

from lamp_fixtures import write_task
from tapper_jax.data import synthetic
from tapper_jax.data.pipeline import make_dataset
from tapper_jax.data.prompts import PLAIN_SUFFIX, PromptFormat
from tapper_jax.data.tfds_lamp import LampBuilder


class CharTokenizer:
  """Bytes as tokens: enough to test padding and masks without a model."""
  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [b + 2 for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(i - 2 for i in ids).decode("utf-8", "ignore")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  folder = str(root / "synthetic_drift")
  synthetic.generate(folder, num_users=6, items_per_user=10, seed=1)
  builder = LampBuilder(lamp_folder=folder, data_dir=str(root / "data"))
  builder.download_and_prepare()
  return builder


def test_builder_writes_array_record_and_reads_back(source):
  assert set(source.info.splits.keys()) == {"train", "dev", "test"}
  test = source.as_data_source(split="test")
  assert len(test) == 6
  ex = test[0]
  profile = json.loads(ex["profile_json"])
  assert profile and [p["date"] for p in profile] == sorted(p["date"] for p in profile)
  assert ex["target"] and ex["query"] and ex["query"] in ex["input"]  # Text features come back as bytes


def test_grain_batches_masks_and_resumes(source):
  train = source.as_data_source(split="train")
  tok = CharTokenizer()
  fmt = PromptFormat(tok, 88)

  def make(seed):
    return make_dataset(train, fmt, max_target_tokens=24, batch_size=4, seed=seed)

  ds = make(7)
  it = iter(ds)
  first = next(it)
  assert first["input_ids"].shape == (4, 112) and first["loss_mask"].dtype == np.int32
  for row in range(4):
    ex = train[int(first["index"][row])]
    tgt = tok.encode(" " + ex["target"].decode()) + [tok.eos_id]
    ids, loss = first["input_ids"][row], first["loss_mask"][row]
    assert list(ids[loss == 1]) == tgt  # loss only on the target and EOS
    assert list(ids[first["target_pos"][row][first["target_valid"][row] == 1]]) == tgt
    assert first["attention_mask"][row].sum() == (ids != 0).sum()
  state = it.get_state()
  expected = [next(it)["index"].tolist() for _ in range(3)]
  it2 = iter(make(7))
  it2.set_state(state)
  assert [next(it2)["index"].tolist() for _ in range(3)] == expected
  other = next(iter(make(8)))
  assert other["index"].tolist() != first["index"].tolist()  # the seed matters


def test_a_long_input_is_shortened_inside_its_text_never_the_instruction_or_the_target():
  tok = CharTokenizer()
  head = "Pick one of [a, b]. text: "
  src = [{"input": head + "x" * 200, "target": "keep me", "keep": len(head)},
         {"input": "short", "target": "a much longer target", "keep": 0}]
  batch = next(iter(make_dataset(src, PromptFormat(tok, 40), max_target_tokens=12,
                                 batch_size=2, shuffle=False)))
  ids = batch["input_ids"][0]
  prompt = tok.decode(ids[(batch["attention_mask"][0] == 1) & (batch["loss_mask"][0] == 0)])
  assert prompt == head + "x" * (40 - len(head) - len(PLAIN_SUFFIX)) + PLAIN_SUFFIX
  assert list(ids[batch["loss_mask"][0] == 1]) == tok.encode(" keep me") + [1]
  assert batch["shortened"].tolist() == [1, 0]
  # A target over its budget loses its end and its EOS, and is flagged to be counted.
  assert batch["target_cut"].tolist() == [0, 1]
  assert batch["target_valid"][1].sum() == 12 and 1 not in batch["input_ids"][1]


def _varied_source(n=48):
  rng = np.random.default_rng(0)
  return [{"input": "w" * int(rng.integers(5, 70)), "target": f"t{i}"} for i in range(n)]


def test_length_groups_cover_each_epoch_once_and_cut_the_padding():
  """`group`: every example still comes once per epoch; batches hold similar lengths, so the
  `bucket` trim leaves less padding than random batches; `bucket` alone only trims."""
  tok, src = CharTokenizer(), _varied_source()
  fmt = PromptFormat(tok, 96)

  def batches(**kw):
    return list(make_dataset(src, fmt, max_target_tokens=8, batch_size=4, seed=3, num_epochs=2,
                             **kw))

  plain, trimmed, grouped = batches(), batches(bucket=8), batches(bucket=8, group=4)
  assert all(b["input_ids"].shape[1] == 104 for b in plain)
  for a, b in zip(plain, trimmed, strict=True):  # bucket alone: the same rows, cut
    np.testing.assert_array_equal(a["index"], b["index"])
    w = b["input_ids"].shape[1]
    assert w % 8 == 0 and w >= b["attention_mask"].sum(1).max()
    np.testing.assert_array_equal(a["input_ids"][:, :w], b["input_ids"])
  for epoch in (grouped[:12], grouped[12:]):
    assert sorted(np.concatenate([b["index"] for b in epoch]).tolist()) == list(range(48))
  waste = lambda bs: sum(b["attention_mask"].size - b["attention_mask"].sum() for b in bs)  # noqa: E731
  assert waste(grouped) < 0.5 * waste(trimmed) < 0.5 * waste(plain)
  it = iter(make_dataset(src, fmt, max_target_tokens=8, batch_size=4, seed=3, bucket=8, group=4))
  for _ in range(5):
    next(it)
  state, want = it.get_state(), [next(it)["index"].tolist() for _ in range(6)]
  it2 = iter(make_dataset(src, fmt, max_target_tokens=8, batch_size=4, seed=3, bucket=8, group=4))
  it2.set_state(state)
  assert [next(it2)["index"].tolist() for _ in range(6)] == want  # resumes mid-window


def test_each_process_loads_only_its_rows_of_the_global_batch():
  tok, src = CharTokenizer(), _varied_source()
  fmt = PromptFormat(tok, 96)
  make = lambda rows: iter(make_dataset(src, fmt, max_target_tokens=8, batch_size=4, seed=1,  # noqa: E731
                                        bucket=8, group=2, rows=rows))
  whole, halves = make(None), [make((0, 2)), make((2, 4))]
  for _ in range(5):
    full, parts = next(whole), [next(h) for h in halves]
    for k in full:  # the same trimmed width in every process: it comes from the global batch
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


def test_unpad_field_gives_each_group_room_for_its_real_tokens():
  """`unpad`: a [G, N] field, N the most real tokens of any group of B/G rows of the global
  batch rounded up to the multiple; every process gets its groups with the same N."""
  tok, src = CharTokenizer(), _varied_source()
  fmt = PromptFormat(tok, 96)
  make = lambda rows, groups: iter(make_dataset(  # noqa: E731
      src, fmt, max_target_tokens=8, batch_size=4, seed=1, bucket=8, rows=rows, unpad=16,
      shards=groups))
  whole, one, halves = make(None, 2), make(None, 1), [make((0, 2), 2), make((2, 4), 2)]
  for _ in range(5):
    full, single, parts = next(whole), next(one), [next(h) for h in halves]
    real = full["attention_mask"].sum(1)
    most = max(real[:2].sum(), real[2:].sum())
    assert full["unpad"].shape == (2, -(-most // 16) * 16) and not full["unpad"].any()
    assert single["unpad"].shape == (1, -(-real.sum() // 16) * 16)
    for k in full:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
  with pytest.raises(ValueError, match="3 groups"):
    next(make(None, 3))


def test_micro_batches_hold_the_length_sorted_rows_spread_over_the_shards():
  """`micro`: the global batch's rows sorted by length, micro-batch m the m-th run of them,
  laid out [shard, micro-batch, row]; each one's width its longest row rounded up. Cut apart by
  `training.steps.micro_batches`, they hold the rows of the batch drawn without micro-batches;
  every process loads its contiguous shards of that layout."""
  from tapper_jax.training.steps import micro_batches
  tok, src = CharTokenizer(), _varied_source()
  fmt = PromptFormat(tok, 96)
  make = lambda rows, micro, shards: iter(make_dataset(  # noqa: E731
      src, fmt, max_target_tokens=8, batch_size=8, seed=1, bucket=8, rows=rows, micro=micro,
      shards=shards))
  plain, whole = make(None, 1, 2), make(None, 2, 2)
  halves = [make((0, 4), 2, 2), make((4, 8), 2, 2)]
  narrower = 0
  for _ in range(6):
    drawn, full, parts = next(plain), next(whole), [next(h) for h in halves]
    widths = tuple(int(w) for w in full["micro"])
    real = full["attention_mask"].sum(1)
    order = np.argsort(drawn["attention_mask"].sum(1), kind="stable")
    micro = micro_batches({k: full[k] for k in ("input_ids", "attention_mask", "index")},
                          widths, shards=2)
    for m, (w, b) in enumerate(zip(widths, micro)):
      rows = b["attention_mask"].sum(1)
      assert w % 8 == 0 and rows.max() > w - 8 and b["input_ids"].shape == (4, w)
      assert np.array_equal(np.sort(rows), np.sort(drawn["attention_mask"].sum(1)[order][4 * m:4 * m + 4]))
      assert not full["attention_mask"][np.isin(full["index"], b["index"]), w:].any()
    assert sorted(full["index"]) == sorted(drawn["index"])
    assert real.max() == max(micro[1]["attention_mask"].sum(1))  # the long half is the last
    narrower += widths[0] < widths[1]
    for k in full:
      if k != "micro":
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
  assert narrower  # the draws give the short half a narrower width at least once
  with pytest.raises(ValueError, match="3 micro-batches"):
    next(make(None, 3, 1))


def test_batches_are_made_only_a_few_ahead():
  """Background threads make at most `prefetch` batches ahead of the consumer (grain's own
  default, 500, held gigabytes of whole-history batches); the order stays the seed's."""
  import threading
  import time
  tok, src = CharTokenizer(), _varied_source(400)
  fmt = PromptFormat(tok, 96)
  made, lock = [0], threading.Lock()

  def count(ex):
    with lock:
      made[0] += 1
    return ex

  def make(prefetch, maps=()):
    return iter(make_dataset(src, fmt, max_target_tokens=8, batch_size=4, seed=5, maps=maps,
                             prefetch=prefetch))
  it = make(3, [count])
  first = next(it)
  time.sleep(1.0)  # time for the threads to run ahead as far as they may
  assert made[0] <= 4 * (1 + 3 + 2)  # the batch taken, the buffer, one in hand per thread
  order = [first["index"].tolist()] + [next(it)["index"].tolist() for _ in range(5)]
  again = make(1)
  assert [next(again)["index"].tolist() for _ in range(6)] == order
  with pytest.raises(ValueError, match="prefetch"):
    make(0)
