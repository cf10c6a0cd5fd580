"""benchmarks/quality.py: the paired bootstrap against hand-computable cases."""

import importlib.util
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quality():
  spec = importlib.util.spec_from_file_location(
      "quality_bench", os.path.join(REPO, "benchmarks", "quality.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules["quality_bench"] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


Q = _quality()


def test_paired_bootstrap_of_identical_and_opposite_predictions():
  golds = {str(i): ("comedy" if i % 2 else "sci-fi") for i in range(40)}
  right = dict(golds)
  wrong = {k: ("sci-fi" if v == "comedy" else "comedy") for k, v in golds.items()}
  same = Q.paired_bootstrap("LaMP_2M", None, golds, right, right, 200)
  assert same["accuracy"] == [0.0, 0.0] and same["f1"] == [0.0, 0.0]
  diff = Q.paired_bootstrap("LaMP_2M", None, golds, right, wrong, 200)
  assert diff["accuracy"] == [1.0, 1.0]


def test_paired_bootstrap_interval_covers_the_observed_difference_and_orients_lower_is_better():
  rng = np.random.default_rng(0)
  golds = {str(i): str(rng.integers(1, 6)) for i in range(300)}
  a = {k: v if rng.random() < 0.7 else "3" for k, v in golds.items()}
  b = {k: v if rng.random() < 0.4 else "3" for k, v in golds.items()}
  ci = Q.paired_bootstrap("LaMP_3", None, golds, a, b, 300)
  from tapper_jax import metrics
  ids = sorted(golds)
  obs = (metrics.score("LaMP_3", [a[i] for i in ids], [golds[i] for i in ids])["MAE"]
         - metrics.score("LaMP_3", [b[i] for i in ids], [golds[i] for i in ids])["MAE"])
  lo, hi = ci["MAE"]
  assert lo <= obs <= hi and hi < 0  # a is better: its MAE is lower


def test_an_earlier_table_is_renamed_not_overwritten(tmp_path):
  stem = str(tmp_path / "quality_cpu")
  for ext in (".md", ".json"):
    with open(stem + ext, "w") as f:
      f.write("old" + ext)
  Q.keep_previous(stem)
  assert not os.path.exists(stem + ".md")
  kept = sorted(os.listdir(tmp_path))
  assert len(kept) == 2 and all(k.startswith("quality_cpu.2") for k in kept)
  assert {open(tmp_path / k).read() for k in kept} == {"old.md", "old.json"}


def test_every_budget_row_is_a_valid_config():
  """Each row's overrides name real config fields and pass validation (methods included)."""
  from tapper_jax.training import defaults, setup
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import offline
  for budget, (tasks, rows, recipes) in Q.BUDGETS.items():
    for task in tasks:
      for row in rows:
        c = offline.get_config(task)
        if row.method != "tapper":
          defaults.with_method(c, row.method)
        for k, v in list(recipes.get(task, {}).items()) + list(row.fields):
          *parents, leaf = k.split(".")
          node = c
          for part in parents:
            node = node[part]
          assert leaf in node, (budget, row.name, k)  # a typo would add a field silently
          defaults.set_field(c, k, v)
        c.stage = "2"
        setup.validate(c, 1)


def _no_model_rows(tmp_path, config_module: str):
  """The no-model rows of a LaMP config on its time-based fixture: (dev questions, scores,
  row -> {question id: answer})."""
  import importlib
  sys.path.insert(0, os.path.join(REPO, "configs"))
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from lamp_fixtures import write_setting
  from tapper_jax.data import lamp as lamp_io
  c = importlib.import_module(config_module).get_config("time")
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, "time")
  preds = {}
  scores = Q.history_label_rows(c, str(tmp_path / "runs"), preds)
  qs, _ = lamp_io.load_split(c.data.folder, c.task, "dev")
  return qs, scores, {k: lamp_io.read_outputs(v)[1] for k, v in preds.items()}


def test_no_model_label_rows_answer_from_the_users_own_visible_labels(tmp_path):
  qs, scores, answers = _no_model_rows(tmp_path, "lamp2")
  assert set(scores) == {"no model: user's majority label", "no model: newest record's label"}
  newest = answers["no model: newest record's label"]
  for q in qs:  # the newest visible record's tag, from the question's own (date-sorted) profile
    assert newest[q.id] == q.profile[-1].fields["tag"]


def test_no_model_rows_of_a_rating_task_add_the_users_mean_rating(tmp_path):
  """Ratings: the mean of the user's visible ratings, rounded, computed here from each
  question's own profile; a fixed-rating shift or another user's profile would fail."""
  qs, scores, answers = _no_model_rows(tmp_path, "lamp3")
  mean = "no model: user's mean rating, rounded"
  assert mean in scores and {"MAE", "RMSE"} <= set(scores[mean])
  got = answers[mean]
  ratings = [[float(r.fields["score"]) for r in q.profile] for q in qs]
  assert len({tuple(r) for r in ratings}) > 1  # the fixture's users differ
  for q, r in zip(qs, ratings):
    assert got[q.id] == str(round(sum(r) / len(r)))


def test_no_model_rows_of_a_generation_task_copy_the_users_own_past_outputs(tmp_path):
  """Headlines: the title of the user's visible record BM25 ranks first for the question (the
  official query against each record's corpus text), and the newest record's title."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import lamp4
  from lamp_fixtures import write_setting
  from rank_bm25 import BM25Okapi
  from tapper_jax.data import lamp as lamp_io
  from tapper_jax.data.retrieval import corpus_text
  from tapper_jax.data.tasks import get_task
  import json
  c = lamp4.get_config("time")
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, "time")
  # Each dev question (on item k) gets one older record, item k - 2, whose text is the
  # question's article: BM25's pick. A record is the same in every file that holds it.
  with open(os.path.join(c.data.folder, "dev_questions.json")) as f:
    article = {f"{q['user_id']}-{int(q['input'].split()[-3]) - 2}": q["input"].split(": ", 1)[1]
               for q in json.load(f)}
  for split in ("train", "dev", "test"):
    path = os.path.join(c.data.folder, f"{split}_questions.json")
    with open(path) as f:
      raw = json.load(f)
    for q in raw:
      for r in q["profile"]:
        r["text"] = article.get(r["id"], r["text"])
    with open(path, "w") as f:
      json.dump(raw, f)
  preds = {}
  scores = Q.history_label_rows(c, str(tmp_path / "runs"), preds)
  similar, newest = "no model: user's most similar past title", "no model: newest record's title"
  other = "no model: another user's most similar past title"
  assert set(scores) == {similar, newest, other} and {"rouge-1", "rouge-L"} <= set(scores[similar])
  qs, _ = lamp_io.load_split(c.data.folder, "LaMP_4", "dev")
  got, last, theirs = (lamp_io.read_outputs(preds[k])[1] for k in (similar, newest, other))
  spec = get_task("LaMP_4")
  first = {}
  for q in qs:
    first.setdefault(q.user_id, q)
  users = sorted(first)

  def best(q, profile):
    s = BM25Okapi([corpus_text(spec, r.fields).split() for r in profile]).get_scores(
        spec.query(q.input).split())
    return profile[int(np.argmax(s))].fields["title"]
  for q in qs:
    assert last[q.id] == q.profile[-1].fields["title"]
    assert got[q.id] == best(q, q.profile) == next(
        r.fields["title"] for r in q.profile if r.fields["text"] in q.input)
    nxt = first[users[(users.index(q.user_id) + 1) % len(users)]]  # the next user's first question
    assert theirs[q.id] == best(q, nxt.profile)
    assert theirs[q.id] in {r.fields["title"] for r in nxt.profile}


def test_paired_mean_interval_of_per_question_values():
  """The gold-NLL interval: mean(a - b) over shared questions, resampled; a question only one
  row scored is left out."""
  rng = np.random.default_rng(0)
  b = {str(i): float(rng.normal(3.0, 1.0)) for i in range(400)}
  a = {k: v - 0.2 + float(rng.normal(0, 0.1)) for k, v in b.items()}
  a["only_a"] = 100.0
  lo, hi = Q.paired_mean_interval(a, b, 500)
  obs = np.mean([a[k] - b[k] for k in b])
  assert lo <= obs <= hi and hi < 0 and hi - lo < 0.05
  assert Q.paired_mean_interval(b, b, 50) == [0.0, 0.0]
  with pytest.raises(ValueError, match="no question"):
    Q.paired_mean_interval({"x": 1.0}, {"y": 1.0}, 10)


def test_report_marks_the_lower_nll_best_and_leaves_rows_without_it_blank():
  res = {"scores": {"non-personalized": {"rouge-1": 0.10, "rouge-L": 0.09, "gold_nll": 3.2},
                    "TAP-PER": {"rouge-1": 0.12, "rouge-L": 0.08, "gold_nll": 3.0},
                    "no model: newest": {"rouge-1": 0.05, "rouge-L": 0.04}},
         "intervals": {"non-personalized": {"rouge-1": [0.0, 0.04], "gold_nll": [-0.3, -0.1]}},
         "questions": 3, "users": 2}
  text = Q.report({"huffpost_4": res}, "header")
  lines = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
  assert lines["| TAP-PER"].startswith("| TAP-PER | **0.1200** | 0.0800 | **3.0000** |")
  assert lines["| no model: newest"].startswith("| no model: newest | 0.0500 | 0.0400 |  |")
  assert "gold_nll [-0.300, -0.100]" in lines["| non-personalized"]


def test_report_pairs_another_rows_controls_with_their_own_model():
  res = {"scores": {"TAP-PER": {"rouge-1": 0.12}, "RAG k=4": {"rouge-1": 0.10},
                    "RAG k=4, another user's input": {"rouge-1": 0.08}},
         "intervals": {"RAG k=4": {"rouge-1": [0.0, 0.04]},
                       "RAG k=4, another user's input": {"rouge-1": [0.02, 0.06]}},
         "control_intervals": {"RAG k=4, another user's input": {"rouge-1": [0.01, 0.03]}},
         "questions": 3, "users": 2}
  text = Q.report({"huffpost_4": res}, "header")
  assert "| row | rouge-1 | TAP-PER minus row, 95% CI | its model minus row, 95% CI |" in text
  assert ("| RAG k=4, another user's input | 0.0800 | rouge-1 [+0.020, +0.060] | "
          "rouge-1 [+0.010, +0.030] |") in text
  assert "| RAG k=4 | 0.1000 | rouge-1 [+0.000, +0.040] |  |" in text


def test_control_rows_find_the_row_they_control_by_its_control_suffix():
  names = ["TAP-PER", "TAP-PER, no personal input", "TAP-PER, one epoch",
           "TAP-PER, one epoch, another user's input", "non-personalized",
           "non-personalized, trained as long", "RAG k=4", "RAG k=4, another user's input"]
  assert Q.control_parents(names) == {
      "TAP-PER, one epoch, another user's input": "TAP-PER, one epoch",
      "RAG k=4, another user's input": "RAG k=4"}
