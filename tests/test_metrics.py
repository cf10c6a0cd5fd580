"""Official LaMP metrics on hand-computed cases, and the evaluate CLI on leaderboard files."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tapper_jax import metrics


def test_lamp1_accuracy_f1_unknown_and_empty_outputs():
  preds = ["[1]", " [2] ", "[3]", "", "[1]"]
  golds = ["[1]", "[2]", "[2]", "[1]", "[2]"]
  # mapped preds [0, 1, -1, -1, 0], golds [0, 1, 1, 0, 1] -> 2/5 correct.
  # class [1]: tp 1, fp 1 (idx 4), fn 1 (idx 3) -> F1 2/4; class [2]: tp 1, fn 2 -> F1 2/4.
  r = metrics.score("LaMP_1", preds, golds)
  assert r == {"accuracy": pytest.approx(0.4), "f1": pytest.approx(0.5)}


def test_lamp2_is_case_sensitive_and_averages_over_all_labels():
  preds = ["comedy", "Comedy", "action"]
  golds = ["comedy", "comedy", "action"]
  # "Comedy" is not a label: wrong. comedy F1 = 2/(2+0+1) = 2/3, action 1, 13 absent labels 0.
  r = metrics.score("LaMP_2", preds, golds)
  assert r["accuracy"] == pytest.approx(2 / 3)
  assert r["f1"] == pytest.approx((2 / 3 + 1) / 15)
  # LaMP_2N uses the news categories.
  r = metrics.score("LaMP_2N", ["politics", "women"], ["politics", "sports"])
  assert r["accuracy"] == 0.5 and r["f1"] == pytest.approx(1 / 15)


def test_lamp3_worst_case_fallback_and_no_clipping():
  preds = ["3", "abc", "", "7", " 4.5 "]
  golds = ["4", "2", "5", "1", "5"]
  # "abc" (gold 2): |1-2| = 1 < |5-2| = 3 -> 5.0; "" (gold 5): |1-5| > 0 -> 1.0; "7" stays 7.
  # errors -1, 3, -4, 6, -0.5 -> MAE 14.5/5, RMSE sqrt(62.25/5).
  r = metrics.score("LaMP_3", preds, golds)
  assert r["MAE"] == pytest.approx(2.9)
  assert r["RMSE"] == pytest.approx(math.sqrt(12.45))


def test_rouge_hand_computed():
  # "the cat sat" vs "the cat sat on the mat": P 3/3, R 3/6 -> F 2/3 for ROUGE-1 and ROUGE-L.
  r = metrics.score("LaMP_4", ["the cat sat"], ["the cat sat on the mat"])
  assert r["rouge-1"] == pytest.approx(2 / 3) and r["rouge-L"] == pytest.approx(2 / 3)
  # Empty prediction scores 0; official tokenizer lowercases; no stemming ("cats" != "cat").
  r = metrics.score("LaMP_5", ["", "The Cat", "cats"], ["hello world", "the cat", "cat"])
  assert r["rouge-1_mean"] == pytest.approx(1 / 3)
  # ROUGE-L uses the longest common subsequence: "a b c d" vs "a c b d" -> LCS 3 -> F 3/4.
  r = metrics.score("LaMP_7", ["a b c d"], ["a c b d"])
  assert r["rouge-L"] == pytest.approx(0.75) and r["rouge-1"] == pytest.approx(1.0)


def test_rouge_bootstrap_is_seeded_and_leaves_global_rng_alone():
  preds = ["a b", "c d e", "f", "a c", ""] * 4
  golds = ["a b c", "c d", "g", "a", "x"] * 4
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  r1, r2 = metrics.score("LaMP_4", preds, golds), metrics.score("LaMP_4", preds, golds)
  assert r1 == r2
  assert (np.random.get_state()[1] == before).all()
  assert abs(r1["rouge-1"] - r1["rouge-1_mean"]) < 0.05


def test_macro_f1_matches_sklearn_on_random_cases():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.RandomState(0)
  labels = metrics.LABELS["LaMP_2M"]
  pool = labels[:6] + ["unknown", "", "Comedy"]
  for _ in range(20):
    golds = list(rng.choice(labels[:8], 30))
    preds = list(rng.choice(pool, 30))
    ours = metrics.score("LaMP_2M", preds, golds)
    idx = lambda x: labels.index(x) if x in labels else -1
    p, g = [idx(x) for x in preds], [idx(x) for x in golds]
    ref = sk.f1_score(g, p, labels=list(range(len(labels))), average="macro", zero_division=0)
    assert ours["f1"] == pytest.approx(ref)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(g, p))


def test_unknown_task():
  with pytest.raises(ValueError, match="unknown task 'LaMP_9'"):
    metrics.score("LaMP_9", [], [])


def _write(path, task, rows):
  path.write_text(json.dumps(metrics.leaderboard(task, rows)))
  return str(path)


def test_evaluate_files_checks_ids_and_task(tmp_path):
  g = _write(tmp_path / "g.json", "LaMP_3", {"a": "1", "b": "5"})
  p = _write(tmp_path / "p.json", "LaMP_3", {"a": "2", "b": "5"})
  assert metrics.evaluate_files(g, p, "LaMP_3") == {"MAE": 0.5, "RMSE": pytest.approx(math.sqrt(0.5))}
  bad = _write(tmp_path / "bad.json", "LaMP_3", {"a": "2"})
  with pytest.raises(ValueError, match=r"bad\.json: prediction ids do not match gold ids \(missing 1: \['b'\]"):
    metrics.evaluate_files(g, bad, "LaMP_3")
  other = _write(tmp_path / "other.json", "LaMP_4", {"a": "2", "b": "5"})
  with pytest.raises(ValueError, match=r"other\.json: field 'task' = 'LaMP_4' does not match"):
    metrics.evaluate_files(g, other, "LaMP_3")
  (tmp_path / "trunc.json").write_text('{"task": "LaMP_3", "golds": [{"id": "a"')
  with pytest.raises(ValueError, match=r"trunc\.json: not valid JSON"):
    metrics.evaluate_files(g, str(tmp_path / "trunc.json"), "LaMP_3")
  (tmp_path / "noout.json").write_text('{"task": "LaMP_3", "golds": [{"id": "a"}]}')
  with pytest.raises(ValueError, match=r"noout\.json: golds\[0\] \(id a\): field 'output' missing"):
    metrics.evaluate_files(g, str(tmp_path / "noout.json"), "LaMP_3")


def test_evaluate_cli(tmp_path):
  g = _write(tmp_path / "g.json", "LaMP_1", {"1": "[1]", "2": "[2]"})
  p = _write(tmp_path / "p.json", "LaMP_1", {"1": "[1]", "2": "[1]"})
  out = subprocess.run([sys.executable, "-m", "tapper_jax.evaluate", f"--golds={g}", f"--preds={p}",
                        "--task=LaMP_1"], capture_output=True, text=True, check=True)
  assert "accuracy" in out.stdout
  written = json.loads((tmp_path / "p.metrics.json").read_text())
  # preds [0, 0] vs golds [0, 1]: acc 1/2; F1 [1] = 2/3, [2] = 0 -> 1/3.
  assert written == {"task": "LaMP_1", "accuracy": 0.5, "f1": pytest.approx(1 / 3)}
