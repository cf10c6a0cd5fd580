"""Generic converter: per-user timestamped JSONL/CSV + a field mapping -> LaMP format, time-based.

A new real source needs a `SourceSpec`, not code. For each user (enough items), items sorted by
date: the newest `n_test` become test questions, the next `n_dev` dev, the rest train. A
question's profile holds only that user's items strictly older than the question. Profiles are
written shuffled, as LaMP's are (readers must sort by date: ours do).

Output folder: {split}_questions.json (with user_id and date), {split}_outputs.json, meta.json
(task, labels, counts, spec).
"""

from __future__ import annotations

import bisect
import collections
import csv
import dataclasses
import json
import math
import os
import random
from typing import Any

from tapper_jax.data.lamp import LampFormatError, Report, parse_day
from tapper_jax.data.tasks import TaskSpec, get_task
from tapper_jax.fileio import atomic_folder


@dataclasses.dataclass(frozen=True)
class Join:
  path: str  # relative to the raw root
  key: str  # column shared with the main source
  fields: tuple[str, ...]  # columns brought in


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  name: str  # output task folder name
  task: str  # the LaMP task this follows (LaMP_2N, LaMP_3, ...)
  path: str  # relative to the raw root
  format: str  # "jsonl" | "csv"
  user_field: str
  date_field: str
  fields: dict[str, str]  # LaMP field -> str.format template over the source row
  id_field: str | None = None  # None: the row number
  join: Join | None = None
  target_transform: str | None = None  # "lower" | "stars" (0.5..5.0 -> 1..5, half stars up)
  label_min_count: int = 0  # classification: labels seen at least this often...
  max_labels: int = 0  # ...the most frequent this many (0: all)
  exclude_labels: tuple[str, ...] = ()
  min_items_per_user: int = 5
  n_test: int = 1
  n_dev: int = 1
  min_profile: int = 1  # questions with fewer older items are skipped (counted)
  max_profile: int = 0  # keep only the newest this many older items (0: all)
  max_train_questions_per_user: int = 0  # newest train questions kept per user (0: all)
  max_users: int = 0  # 0: all eligible users
  seed: int = 0


def _rows(root: str, spec: SourceSpec, report: Report):
  path = os.path.join(root, spec.path)
  if not os.path.isfile(path):
    raise LampFormatError(f"{path}: missing")
  with open(path, encoding="utf-8") as f:
    if spec.format == "jsonl":
      for i, line in enumerate(f):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          report.skip("source_row_not_json", f"{spec.path}:{i + 1} ({e.msg})")
          continue
        if not isinstance(row, dict):
          report.skip("source_row_not_object", f"{spec.path}:{i + 1}")
          continue
        yield i, row
    elif spec.format == "csv":
      yield from enumerate(csv.DictReader(f))
    else:
      raise ValueError(f"spec {spec.name}: format {spec.format!r} (jsonl or csv)")


def _target(value: str, how: str | None) -> str:
  if how == "lower":
    return value.strip().lower()
  if how == "stars":
    return str(min(5, max(1, math.ceil(float(value)))))
  return value.strip()


def collect_items(root: str, spec: SourceSpec, report: Report) -> dict[str, list[dict]]:
  """Source rows -> {user: [LaMP record dict with id, date, day, fields]} (unsorted)."""
  task = get_task(spec.task)
  joined: dict[str, dict] = {}
  if spec.join:
    jpath = os.path.join(root, spec.join.path)
    with open(jpath, encoding="utf-8") as f:
      for row in csv.DictReader(f):
        joined[row[spec.join.key]] = {k: row[k] for k in spec.join.fields}
  users: dict[str, list[dict]] = collections.defaultdict(list)
  for i, row in _rows(root, spec, report):
    where = f"{spec.path}:{i + 1}"
    user = str(row.get(spec.user_field) or "").strip()
    if not user:
      report.skip("row_without_user", where)
      continue
    try:
      day = parse_day(row.get(spec.date_field))
    except ValueError:
      report.skip("row_bad_date", where)
      continue
    if spec.join:
      extra = joined.get(row.get(spec.join.key))
      if extra is None:
        report.skip("row_join_missing", where)
        continue
      row = {**row, **extra}
    try:
      fields = {k: t.format(**row).strip() for k, t in spec.fields.items()}
    except KeyError as e:
      raise LampFormatError(f"{where}: field {e.args[0]!r} missing (spec {spec.name})") from e
    if task.target_field:
      try:
        fields[task.target_field] = _target(fields[task.target_field], spec.target_transform)
      except (ValueError, OverflowError):  # "abc", "inf" as stars
        report.skip("row_bad_target", where)
        continue
    if any(not fields[f] for f in task.profile_fields):
      report.skip("row_empty_field", where)
      continue
    if spec.id_field and row.get(spec.id_field) in (None, ""):
      report.skip("row_without_id", where)
      continue
    rid = str(row[spec.id_field]) if spec.id_field else str(i)
    users[user].append({"id": f"{spec.name}-{rid}", "date": str(row[spec.date_field]),
                        "day": day, **fields})
  return users


def _select_labels(users, task: TaskSpec, spec: SourceSpec, report: Report) -> list[str]:
  counts = collections.Counter(it[task.target_field] for items in users.values() for it in items)
  labels = [l for l, c in counts.most_common() if c >= spec.label_min_count
            and l not in spec.exclude_labels]
  if spec.max_labels:
    labels = labels[: spec.max_labels]
  keep = set(labels)
  for u in list(users):
    before = len(users[u])
    users[u] = [it for it in users[u] if it[task.target_field] in keep]
    report.note("items_with_rare_or_excluded_label", before - len(users[u]))
  return labels


def convert(root: str, spec: SourceSpec, out_dir: str, *, synthetic: bool = False) -> dict[str, Any]:
  """Builds one LaMP-format task folder; returns (and writes to meta.json) its counts."""
  task = get_task(spec.task)
  report = Report(spec.path)
  users = collect_items(root, spec, report)
  labels = list(task.labels)
  if task.kind == "classification":
    labels = _select_labels(users, task, spec, report)
    task = task.with_labels(labels)
  rng = random.Random(spec.seed)
  eligible = sorted(u for u, items in users.items() if len(items) >= spec.min_items_per_user)
  report.note("users_below_min_items", len(users) - len(eligible))
  if spec.max_users and len(eligible) > spec.max_users:
    eligible = sorted(rng.sample(eligible, spec.max_users))
  input_template = task.input_template
  splits = {s: {"questions": [], "golds": []} for s in ("train", "dev", "test")}
  for user in eligible:
    items = sorted(users[user], key=lambda it: (it["day"], it["id"]))
    days = [it["day"] for it in items]
    records = [{kk: v for kk, v in it.items() if kk != "day"} for it in items]
    n = len(items)
    roles = (["train"] * (n - spec.n_test - spec.n_dev) + ["dev"] * spec.n_dev
             + ["test"] * spec.n_test)
    train_idx = [k for k, r in enumerate(roles) if r == "train"]
    if spec.max_train_questions_per_user:
      train_idx = set(train_idx[-spec.max_train_questions_per_user:])
    for k, (item, role) in enumerate(zip(items, roles)):
      if role == "train" and k not in train_idx:
        continue
      # Items are sorted by day: the strictly older ones are the prefix before this day.
      older_end = bisect.bisect_left(days, item["day"])
      start = max(0, older_end - spec.max_profile) if spec.max_profile else 0
      if older_end - start < spec.min_profile:
        report.skip(f"{role}_question_short_profile", item["id"])
        continue
      profile = records[start:older_end]
      rng.shuffle(profile)  # LaMP profiles are not in time order
      splits[role]["questions"].append({
          "id": item["id"], "user_id": user, "date": item["date"],
          "input": input_template.format(**records[k]), "profile": profile})
      splits[role]["golds"].append({"id": item["id"], "output": str(item[task.target_field])})
  counts = {"users": len(eligible), "report": dict(report.counts)}
  for s, d in splits.items():
    sizes = [len(q["profile"]) for q in d["questions"]]
    counts[s] = {"questions": len(sizes), "users": len({q["user_id"] for q in d["questions"]}),
                 "profile_min": min(sizes, default=0), "profile_max": max(sizes, default=0),
                 "profile_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0.0}
  meta = {"name": spec.name, "task": task.name, "kind": task.kind, "labels": labels,
          "setting": "time-based", "source": spec.path, "synthetic": synthetic, "counts": counts,
          "spec": dataclasses.asdict(spec)}
  with atomic_folder(out_dir) as tmp:
    for s, d in splits.items():
      with open(os.path.join(tmp, f"{s}_questions.json"), "w", encoding="utf-8") as f:
        json.dump(d["questions"], f, ensure_ascii=False)
      with open(os.path.join(tmp, f"{s}_outputs.json"), "w", encoding="utf-8") as f:
        json.dump({"task": task.name, "golds": d["golds"]}, f, ensure_ascii=False)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2, ensure_ascii=False)
  return meta
