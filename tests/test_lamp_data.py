"""LaMP readers: every task, date sorting, settings, OPPU re-splits, and a bad-input corpus."""

import json
import os

import pytest

from lamp_fixtures import DATES, GOLDS, INPUTS, QUERIES, profile, write_task
from tapper_jax.data import lamp
from tapper_jax.data.tasks import TASKS, get_task


@pytest.mark.parametrize("task", sorted(TASKS))
def test_fixture_of_each_task_loads_sorted_with_query_and_template(tmp_path, task):
  folder = write_task(str(tmp_path), task)
  qs, report = lamp.load_split(folder, task, "dev")
  assert len(qs) == 2 and report.counts["questions"] == 2
  q = qs[0]
  assert q.gold == GOLDS[task]
  assert q.user_id == f"q{q.id}"  # user-based: each question is its own user
  # oldest first; the two 2017-01-15 records keep file order (r1 before r3)
  assert [r.id for r in q.profile] == ["r1", "r3", "r2", "r0", "r4"]
  assert [r.date for r in q.profile] == sorted(DATES)
  assert all(set(get_task(task).profile_fields) <= set(r.fields) for r in q.profile)
  spec = get_task(task)
  assert spec.query(q.input) == QUERIES[task]
  assert spec.record_text(q.profile[0].fields)  # the template renders from the record's fields


def test_time_based_files_carry_user_id(tmp_path):
  folder = write_task(str(tmp_path), "LaMP_4", time_based=True)
  qs, _ = lamp.load_split(folder, "LaMP_4", "dev")
  assert {q.user_id for q in qs} == {"u7"}


def test_question_date_limits_history_to_strictly_older(tmp_path):
  q = {"id": "q", "input": INPUTS["LaMP_7"], "profile": profile("LaMP_7"), "date": "2018-06-30"}
  folder = write_task(str(tmp_path), "LaMP_7", questions=[q])
  (question,), _ = lamp.load_split(folder, "LaMP_7", "dev")
  assert [r.date for r in lamp.older_profile(question)] == ["2017-01-15", "2017-01-15"]


def test_oppu_resplit(tmp_path):
  users = [{"user_id": "u1", "profile": profile("LaMP_2M"),
            "query": [{"id": "a", "input": INPUTS["LaMP_2M"]}, {"id": "b", "input": INPUTS["LaMP_2M"]}]}]
  (tmp_path / "user_top_100_history.json").write_text(json.dumps(users))
  (tmp_path / "user_top_100_history_label.json").write_text(json.dumps(
      {"task": "LaMP_2M", "golds": [{"id": "a", "output": "comedy"}, {"id": "b", "output": "action"}]}))
  qs, report = lamp.load_oppu(str(tmp_path), "LaMP_2M")
  assert [(q.id, q.user_id, q.gold) for q in qs] == [("a", "u1", "comedy"), ("b", "u1", "action")]
  assert [r.id for r in qs[0].profile] == ["r1", "r3", "r2", "r0", "r4"]


# ------------------------------------------------------------------ bad input corpus
def _one(task="LaMP_2M", **kw):
  q = {"id": "q1", "input": INPUTS[task], "profile": profile(task)}
  q.update(kw)
  return q


def test_truncated_json(tmp_path):
  write_task(str(tmp_path), "LaMP_2M")
  p = tmp_path / "dev_questions.json"
  p.write_text(p.read_text()[:50])
  with pytest.raises(lamp.LampFormatError, match=r"dev_questions\.json: not valid JSON \(line 1"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_non_utf8(tmp_path):
  write_task(str(tmp_path), "LaMP_2M")
  p = tmp_path / "dev_questions.json"
  p.write_bytes(p.read_bytes().replace(b"robot", b"rob\xff\xfet"))
  with pytest.raises(lamp.LampFormatError, match=r"dev_questions\.json: not UTF-8 \(byte \d+"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_missing_question_field(tmp_path):
  q = _one()
  del q["input"]
  write_task(str(tmp_path), "LaMP_2M", questions=[q])
  with pytest.raises(lamp.LampFormatError,
                     match=r"dev_questions\.json: question\[0\] \(id q1\): field 'input' missing"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_missing_profile_task_field(tmp_path):
  q = _one()
  del q["profile"][2]["tag"]
  write_task(str(tmp_path), "LaMP_2M", questions=[q])
  with pytest.raises(lamp.LampFormatError,
                     match=r"question\[0\] \(id q1\) profile\[2\]: field 'tag' missing"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_invalid_and_missing_dates_are_counted_skips_or_strict_errors(tmp_path):
  q = _one()
  q["profile"][0]["date"] = "not a date"
  del q["profile"][1]["date"]
  write_task(str(tmp_path), "LaMP_2M", questions=[q])
  (question,), report = lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  assert len(question.profile) == 3
  assert report.counts["profile_record_invalid_date"] == 1
  assert report.counts["profile_record_missing_date"] == 1
  assert "profile_record_invalid_date=1" in report.summary()
  with pytest.raises(lamp.LampFormatError,
                     match=r"profile\[0\] \(id r0\): field 'date' invalid: 'not a date'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev", strict=True)


def test_empty_profile_is_kept_and_reported(tmp_path):
  write_task(str(tmp_path), "LaMP_2M", questions=[_one(profile=[])])
  (question,), report = lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  assert question.profile == [] and report.counts["questions_with_empty_profile"] == 1


def test_duplicate_ids(tmp_path):
  write_task(str(tmp_path), "LaMP_2M", questions=[_one(), _one()])
  with pytest.raises(lamp.LampFormatError, match=r"question\[1\] \(id q1\): duplicate question id 'q1'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  q = _one()
  q["profile"][3]["id"] = "r0"
  write_task(str(tmp_path), "LaMP_2M", questions=[q])
  (question,), report = lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  assert len(question.profile) == 4 and report.counts["profile_record_duplicate_id"] == 1
  golds = {"task": "LaMP_2M", "golds": [{"id": "q1", "output": "a"}, {"id": "q1", "output": "b"}]}
  write_task(str(tmp_path), "LaMP_2M", questions=[_one()], golds=golds)
  with pytest.raises(lamp.LampFormatError, match=r"dev_outputs\.json: golds\[1\]: duplicate id 'q1'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev")


def test_question_without_gold_is_counted(tmp_path):
  golds = {"task": "LaMP_2M", "golds": [{"id": "q1", "output": "comedy"}]}
  write_task(str(tmp_path), "LaMP_2M", questions=[_one(), _one(id="q2")], golds=golds)
  qs, report = lamp.load_split(str(tmp_path), "LaMP_2M", "dev")
  assert [q.id for q in qs] == ["q1"] and report.counts["question_without_gold"] == 1
  with pytest.raises(lamp.LampFormatError, match=r"dev_outputs\.json: no gold for question id 'q2'"):
    lamp.load_split(str(tmp_path), "LaMP_2M", "dev", strict=True)


def test_invalid_question_date_is_a_format_error(tmp_path):
  write_task(str(tmp_path), "LaMP_7", questions=[_one("LaMP_7", date="31/31/2020")])
  with pytest.raises(lamp.LampFormatError,
                     match=r"dev_questions\.json: question\[0\] \(id q1\): field 'date' invalid: '31/31/2020'"):
    lamp.load_split(str(tmp_path), "LaMP_7", "dev")
