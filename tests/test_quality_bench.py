"""benchmarks/quality.py: the paired bootstrap against hand-computable cases."""

import importlib.util
import os
import sys

import numpy as np

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
