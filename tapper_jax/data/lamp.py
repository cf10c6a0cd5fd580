"""Readers for LaMP files: official `{split}_questions.json` + `{split}_outputs.json` (user- and
time-based settings) and the OPPU-style re-splits (`user_others.json`, `user_top_100_history.json`,
`..._label.json`) that the TAP-PER paper used.

Every profile comes back sorted by date, oldest first (stable: ties keep file order): LaMP
profiles are *not* in time order. Every record keeps its id, date and task fields.

Bad input never passes silently. Structural damage (truncated JSON, non-UTF-8, a missing
required field, duplicate question ids) raises `LampFormatError` naming the file, the record and
the field. Damage confined to one profile record (missing/invalid date, duplicate record id) or
to one question (no gold) is skipped, counted in the `Report`, and the report is printed by the
callers; `strict=True` turns those skips into errors too.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import os
from typing import Any

from tapper_jax.data.tasks import TaskSpec, get_task

EPOCH = dt.datetime(1970, 1, 1)


class LampFormatError(ValueError):
  """Input that cannot be read; the message names file, record and field."""


@dataclasses.dataclass
class Record:
  id: str
  date: str
  day: float  # days since 1970-01-01 (fractional for timestamps)
  fields: dict[str, Any]  # the task fields (text, title, tag, ...), id and date included


@dataclasses.dataclass
class Question:
  id: str
  user_id: str
  input: str
  profile: list[Record]  # oldest first
  gold: str | None = None
  date: str | None = None  # the question's own date where the file gives one
  date_day: float | None = None  # `date` parsed (readers validate it once)

  @property
  def day(self) -> float | None:
    """The question's time: its own date, else its newest profile record's."""
    if self.date_day is not None:
      return self.date_day
    return self.profile[-1].day if self.profile else None


@dataclasses.dataclass
class Report:
  """Counted skips and notes, so that nothing is dropped silently."""
  source: str
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, kind: str, where: str):
    self.counts[kind] += 1
    self.examples.setdefault(kind, [])
    if len(self.examples[kind]) < 3:
      self.examples[kind].append(where)

  def note(self, kind: str, n: int = 1):
    self.counts[kind] += n

  def summary(self) -> str:
    if not self.counts:
      return f"{self.source}: nothing skipped"
    parts = [f"{k}={v}" + (f" (e.g. {'; '.join(self.examples[k])})" if k in self.examples else "")
             for k, v in sorted(self.counts.items())]
    return f"{self.source}: " + ", ".join(parts)


def parse_day(value: Any) -> float:
  """'2018-05-26', '2018-05-26 12:00:00', '2018-05-26T12:00:00', or a year (2009) -> days."""
  if isinstance(value, bool):
    raise ValueError(f"not a date: {value!r}")
  if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()
                                and len(value.strip()) == 4):
    year = int(value)
    if not 1000 <= year <= 9999:
      raise ValueError(f"not a year: {value!r}")
    return (dt.datetime(year, 1, 1) - EPOCH).total_seconds() / 86400.0
  if not isinstance(value, str):
    raise ValueError(f"not a date: {value!r}")
  s = value.strip().replace("T", " ").rstrip("Z")
  for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y/%m/%d", "%d %B %Y",
              "%B %d, %Y"):
    try:
      return (dt.datetime.strptime(s, fmt) - EPOCH).total_seconds() / 86400.0
    except ValueError:
      continue
  raise ValueError(f"unrecognised date {value!r}")


def load_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise LampFormatError(f"{path}: missing")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LampFormatError(f"{path}: not UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r})") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise LampFormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}; "
                          "truncated file?)") from e


def _require(obj: Any, field: str, path: str, where: str, types=(str,)) -> Any:
  if not isinstance(obj, dict) or field not in obj or obj[field] is None:
    raise LampFormatError(f"{path}: {where}: field {field!r} missing")
  v = obj[field]
  if not isinstance(v, types):
    raise LampFormatError(f"{path}: {where}: field {field!r} has type {type(v).__name__}")
  return v


def _question_date(row: dict, path: str, where: str) -> tuple[str | None, float | None]:
  """(date, day) of a question that may carry its own date; a bad one is a format error."""
  date = row.get("date")
  if date is None:
    return None, None
  try:
    return str(date), parse_day(date)
  except ValueError as e:
    raise LampFormatError(f"{path}: {where}: field 'date' invalid: {date!r}") from e


def parse_profile(items: Any, task: TaskSpec, path: str, where: str, report: Report,
                  strict: bool) -> list[Record]:
  """Validates, dates and sorts (stable, oldest first) one profile."""
  if not isinstance(items, list):
    raise LampFormatError(f"{path}: {where}: field 'profile' is not a list")
  out: list[Record] = []
  seen: set[str] = set()
  for j, item in enumerate(items):
    loc = f"{where} profile[{j}]"
    rid = str(_require(item, "id", path, loc, (str, int)))
    for f in task.profile_fields:
      _require(item, f, path, loc, (str, int, float))
    date = item.get("date") if isinstance(item, dict) else None
    try:
      day = parse_day(date) if date is not None else None
    except ValueError:
      day = None
    if day is None:
      kind = "profile_record_missing_date" if date is None else "profile_record_invalid_date"
      if strict:
        raise LampFormatError(f"{path}: {loc} (id {rid}): field 'date' "
                              f"{'missing' if date is None else f'invalid: {date!r}'}")
      report.skip(kind, f"{loc} id {rid}")
      continue
    if rid in seen:
      if strict:
        raise LampFormatError(f"{path}: {loc}: duplicate record id {rid!r}")
      report.skip("profile_record_duplicate_id", f"{loc} id {rid}")
      continue
    seen.add(rid)
    out.append(Record(rid, str(date), day, dict(item)))
  out.sort(key=lambda r: r.day)  # Python's sort is stable: ties keep file order
  return out


def read_outputs(path: str) -> tuple[str | None, dict[str, str]]:
  """Leaderboard-format golds -> (task, {id: output}); duplicate ids are an error."""
  obj = load_json(path)
  rows = obj.get("golds") if isinstance(obj, dict) else obj
  if not isinstance(rows, list):
    raise LampFormatError(f"{path}: field 'golds' missing (expected {{task, golds: [...]}})")
  out: dict[str, str] = {}
  for i, r in enumerate(rows):
    key = str(_require(r, "id", path, f"golds[{i}]", (str, int)))
    out_v = _require(r, "output", path, f"golds[{i}] (id {key})", (str, int, float))
    if key in out:
      raise LampFormatError(f"{path}: golds[{i}]: duplicate id {key!r}")
    out[key] = str(out_v)
  return (obj.get("task") if isinstance(obj, dict) else None), out


def _attach_golds(questions, golds, path, report, strict):
  kept = []
  for q in questions:
    if q.id in golds:
      q.gold = golds[q.id]
      kept.append(q)
    elif strict:
      raise LampFormatError(f"{path}: no gold for question id {q.id!r}")
    else:
      report.skip("question_without_gold", f"id {q.id}")
  return kept


def read_questions(path: str, task: "str | TaskSpec", *, report: Report | None = None,
                   strict: bool = False) -> list[Question]:
  """Official `{split}_questions.json` (user- or time-based). Returns questions in file order."""
  spec = task if isinstance(task, TaskSpec) else get_task(task)
  report = report or Report(path)
  rows = load_json(path)
  if not isinstance(rows, list):
    raise LampFormatError(f"{path}: expected a list of questions")
  out, seen = [], set()
  for i, row in enumerate(rows):
    where = f"question[{i}]"
    qid = str(_require(row, "id", path, where, (str, int)))
    where = f"question[{i}] (id {qid})"
    text = _require(row, "input", path, where)
    if qid in seen:
      raise LampFormatError(f"{path}: {where}: duplicate question id {qid!r}")
    seen.add(qid)
    profile = parse_profile(_require(row, "profile", path, where, (list,)), spec, path, where,
                            report, strict)
    if not profile:
      report.note("questions_with_empty_profile")
    # Time-based files carry user_id; in the user-based setting each question is its own user.
    user = str(row.get("user_id", f"q{qid}"))
    date, day = _question_date(row, path, where)
    out.append(Question(qid, user, text, profile, date=date, date_day=day))
  report.note("questions", len(out))
  return out


def load_split(folder: str, task: "str | TaskSpec", split: str, *, strict: bool = False,
               require_golds: bool = True) -> tuple[list[Question], Report]:
  """`folder/{split}_questions.json` with golds from `folder/{split}_outputs.json`."""
  qpath = os.path.join(folder, f"{split}_questions.json")
  report = Report(qpath)
  questions = read_questions(qpath, task, report=report, strict=strict)
  opath = os.path.join(folder, f"{split}_outputs.json")
  if os.path.isfile(opath):
    _, golds = read_outputs(opath)
    questions = _attach_golds(questions, golds, opath, report, strict)
  elif require_golds:
    raise LampFormatError(f"{opath}: missing (pass require_golds=False for unlabelled test sets)")
  return questions, report


def load_oppu(folder: str, task: str, *, which: str = "user_top_100_history",
              strict: bool = False) -> tuple[list[Question], Report]:
  """OPPU-style re-split: a list of users {user_id, profile, query: [{id, input}]} + label file.

  Each query becomes a Question whose profile is the user's whole (date-sorted) profile, as
  OPPU/TAP-PER use it.
  """
  spec = get_task(task)
  path = os.path.join(folder, f"{which}.json")
  report = Report(path)
  users = load_json(path)
  if not isinstance(users, list):
    raise LampFormatError(f"{path}: expected a list of users")
  questions, seen = [], set()
  for i, u in enumerate(users):
    uid = str(u.get("user_id", i)) if isinstance(u, dict) else str(i)
    where = f"user[{i}] (user_id {uid})"
    profile = parse_profile(_require(u, "profile", path, where, (list,)), spec, path, where,
                            report, strict)
    for j, q in enumerate(_require(u, "query", path, where, (list,))):
      qid = str(_require(q, "id", path, f"{where} query[{j}]", (str, int)))
      if qid in seen:
        raise LampFormatError(f"{path}: {where} query[{j}]: duplicate question id {qid!r}")
      seen.add(qid)
      qwhere = f"{where} query[{j}] (id {qid})"
      text = _require(q, "input", path, qwhere)
      gold = q.get("gold", q.get("output"))
      date, day = _question_date(q, path, qwhere)
      questions.append(Question(qid, uid, text, list(profile),
                                gold=None if gold is None else str(gold), date=date, date_day=day))
  label_path = os.path.join(folder, f"{which}_label.json")
  if os.path.isfile(label_path):
    _, golds = read_outputs(label_path)
    questions = _attach_golds(questions, golds, label_path, report, strict)
  report.note("questions", len(questions))
  return questions, report


def older_profile(q: Question) -> list[Record]:
  """The records strictly older than the question (all of them if it has no date of its own)."""
  if q.date_day is None:
    return q.profile
  return [r for r in q.profile if r.day < q.date_day]


def task_of_folder(folder: str, task: str | None = None) -> TaskSpec:
  """The TaskSpec of a task folder: its meta.json (offline/synthetic: own labels) or `task`."""
  meta_path = os.path.join(folder, "meta.json")
  if os.path.isfile(meta_path):
    meta = load_json(meta_path)
    spec = get_task(meta["task"])
    return spec.with_labels(meta["labels"]) if meta.get("labels") else spec
  if task is None:
    raise LampFormatError(f"{meta_path}: missing, and no task given")
  return get_task(task)
