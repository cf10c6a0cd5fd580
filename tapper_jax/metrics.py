"""Official LaMP metrics, with the semantics of LaMP's eval/evaluation.py. Pure Python + NumPy.

- LaMP-1/2 (classification): prediction and gold are `str(x).strip()`ed and looked up, exactly
  and case-sensitively, in the task's label list; anything else maps to -1, counts as wrong and
  is outside the F1 label set. Accuracy over all examples; macro-F1 over *all* labels of the
  task (sklearn `f1_score(labels=range(n), average="macro")`: a label that never occurs scores 0).
- LaMP-3 (rating): `float(x)` after strip; an unparseable prediction becomes the extreme (1 or 5)
  farthest from the gold. No clipping: "7" stays 7. MAE and RMSE.
- LaMP-4..7 (generation): ROUGE-1 and ROUGE-L F-measure from rouge-score without stemming, on
  stripped text, aggregated as HF `evaluate`'s rouge does (rouge_score BootstrapAggregator,
  mid F-measure). That aggregator resamples at random; we seed it (reproducible numbers) and also
  report the plain mean (`*_mean`), which the bootstrap median estimates.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Label lists as the official evaluation uses them (order matters only for reporting).
LABELS = {
    "LaMP_1": ["[1]", "[2]"],
    "LaMP_2M": ["sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia",
                "dark comedy", "classic", "psychology", "fantasy", "romance", "thought-provoking",
                "social commentary", "violence", "true story"],
    "LaMP_2N": ["food & drink", "sports", "education", "parents", "religion", "travel", "business",
                "crime", "science & technology", "culture & arts", "entertainment", "politics",
                "women", "style & beauty", "healthy living"],
    "LaMP_3": ["1", "2", "3", "4", "5"],
}
TASK_ALIASES = {"LaMP_2": "LaMP_2M"}  # LaMP-2 is movie tagging since LaMP v2; news is 2N
CLASSIFICATION = ("LaMP_1", "LaMP_2M", "LaMP_2N")
REGRESSION = ("LaMP_3",)
GENERATION = ("LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7")
ALL_TASKS = CLASSIFICATION + REGRESSION + GENERATION


def canonical_task(task: str) -> str:
  t = task.replace("-", "_")
  t = TASK_ALIASES.get(t, t)
  if t not in ALL_TASKS:
    raise ValueError(f"unknown task {task!r}; known: {', '.join(ALL_TASKS)} (LaMP_2 = LaMP_2M)")
  return t


def accuracy_macro_f1(preds: Sequence, golds: Sequence, labels: Sequence[str]) -> dict[str, float]:
  index = {l: i for i, l in enumerate(labels)}
  p = np.array([index.get(str(x).strip(), -1) for x in preds])
  g = np.array([index.get(str(x).strip(), -1) for x in golds])
  acc = float(np.mean(p == g)) if len(g) else 0.0
  f1s = []
  for c in range(len(labels)):
    tp = int(np.sum((p == c) & (g == c)))
    fp = int(np.sum((p == c) & (g != c)))
    fn = int(np.sum((p != c) & (g == c)))
    # sklearn with zero_division="warn": an undefined precision/recall/F counts as 0.
    f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  return {"accuracy": acc, "f1": float(np.mean(f1s)) if f1s else 0.0}


def _rating(x, gold: float) -> float:
  try:
    return float(str(x).strip())
  except ValueError:
    return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0


def mae_rmse(preds: Sequence, golds: Sequence) -> dict[str, float]:
  g = [float(str(y).strip()) for y in golds]
  p = [_rating(x, y) for x, y in zip(preds, g)]
  err = np.asarray(p, np.float64) - np.asarray(g, np.float64)
  return {"MAE": float(np.mean(np.abs(err))), "RMSE": float(math.sqrt(np.mean(err ** 2)))}


def rouge(preds: Sequence[str], golds: Sequence[str], seed: int = 0) -> dict[str, float]:
  from rouge_score import rouge_scorer, scoring
  scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
  agg = scoring.BootstrapAggregator()
  r1, rl = [], []
  for p, g in zip(preds, golds):
    s = scorer.score_multi([str(g).strip()], str(p).strip())
    agg.add_scores(s)
    r1.append(s["rouge1"].fmeasure)
    rl.append(s["rougeL"].fmeasure)
  if not r1:
    return {"rouge-1": 0.0, "rouge-L": 0.0, "rouge-1_mean": 0.0, "rouge-L_mean": 0.0}
  # BootstrapAggregator draws from NumPy's global RNG: seed it, then put the caller's state back.
  saved = np.random.get_state()
  np.random.seed(seed)
  try:
    result = agg.aggregate()
  finally:
    np.random.set_state(saved)
  return {"rouge-1": float(result["rouge1"].mid.fmeasure),
          "rouge-L": float(result["rougeL"].mid.fmeasure),
          "rouge-1_mean": float(np.mean(r1)), "rouge-L_mean": float(np.mean(rl))}


def score(task: str, preds: Sequence, golds: Sequence,
          labels: Sequence[str] | None = None) -> dict[str, float]:
  """Official metrics of `task`; `labels` replaces the label list (offline/synthetic tasks)."""
  t = canonical_task(task)
  if len(preds) != len(golds):
    raise ValueError(f"{len(preds)} predictions for {len(golds)} golds")
  if t in CLASSIFICATION:
    return accuracy_macro_f1(preds, golds, list(labels) if labels else LABELS[t])
  if t in REGRESSION:
    return mae_rmse(preds, golds)
  return rouge(preds, golds)


def evaluate_files(golds_path: str, preds_path: str, task: str) -> dict[str, float]:
  """Scores a leaderboard-format predictions file against golds; the id sets must match."""
  from tapper_jax.data.lamp import read_outputs  # the one leaderboard reader (no JAX there)
  t = canonical_task(task)
  gtask, golds = read_outputs(golds_path)
  ptask, preds = read_outputs(preds_path)
  for path, name in ((golds_path, gtask), (preds_path, ptask)):
    if name is None:
      raise ValueError(f"{path}: field 'task' missing")
    if canonical_task(name) != t:
      raise ValueError(f"{path}: field 'task' = {name!r} does not match --task {task}")
  if set(golds) != set(preds):
    missing, extra = sorted(set(golds) - set(preds)), sorted(set(preds) - set(golds))
    raise ValueError(f"{preds_path}: prediction ids do not match gold ids "
                     f"(missing {len(missing)}: {missing[:5]}, extra {len(extra)}: {extra[:5]})")
  ids = sorted(golds)
  return score(t, [preds[i] for i in ids], [golds[i] for i in ids])


def leaderboard(task: str, outputs: dict[str, str]) -> dict:
  """{"task", "golds": [{"id", "output"}]}: the official file format, for golds or predictions."""
  return {"task": task, "golds": [{"id": k, "output": v} for k, v in outputs.items()]}


def paired_bootstrap(task, labels, golds, a, b, n, seed=0):
  """95% interval of metric(a) - metric(b) over questions resampled with replacement, for each
  metric. golds, a, b: {question id: text}; the questions are golds' ids."""
  import numpy as np
  ids = sorted(golds)
  g = [golds[i] for i in ids]
  pa, pb = [a[i] for i in ids], [b[i] for i in ids]
  rng = np.random.default_rng(seed)
  t = canonical_task(task)
  if t in GENERATION:  # per-question ROUGE once, then resample means
    from rouge_score import rouge_scorer
    sc = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)

    def per(p):
      s = [sc.score(str(y).strip(), str(x).strip()) for x, y in zip(p, g)]
      return {"rouge-1": np.array([x["rouge1"].fmeasure for x in s]),
              "rouge-L": np.array([x["rougeL"].fmeasure for x in s])}
    sa, sb = per(pa), per(pb)  # a mean over questions: the same resamples as any such mean
    return {k: paired_mean_interval(dict(zip(ids, sa[k])), dict(zip(ids, sb[k])), n, seed)
            for k in sa}
  diffs = {}
  for _ in range(n):  # F1, RMSE: not means over questions, so each resample is scored whole
    idx = rng.integers(0, len(ids), len(ids))
    ma = score(task, [pa[i] for i in idx], [g[i] for i in idx], labels=labels)
    mb = score(task, [pb[i] for i in idx], [g[i] for i in idx], labels=labels)
    for k in ma:
      diffs.setdefault(k, []).append(ma[k] - mb[k])
  return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
          for k, v in diffs.items() if not k.endswith("_mean")}


def paired_mean_interval(a: dict, b: dict, n: int, seed: int = 0) -> list[float]:
  """95% interval of mean(a) - mean(b) over the questions both score ({id: value}, e.g. the
  per-question gold NLL), resampled with replacement."""
  import numpy as np
  ids = sorted(set(a) & set(b))
  if not ids:
    raise ValueError("paired_mean_interval: no question scored by both rows")
  d = np.asarray([a[i] - b[i] for i in ids], np.float64)
  rng = np.random.default_rng(seed)
  means = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n)]
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
