"""Official LaMP metrics on leaderboard-format files.

  python -m tapper_jax.evaluate --golds=dev_outputs.json --preds=preds.json --task=LaMP_2 \
      [--out=metrics.json]
"""

import json

from absl import app, flags

_GOLDS = flags.DEFINE_string("golds", None, "Gold file: {task, golds: [{id, output}]}.", required=True)
_PREDS = flags.DEFINE_string("preds", None, "Predictions in the same format.", required=True)
_TASK = flags.DEFINE_string("task", None, "LaMP_1, LaMP_2 (=2M), LaMP_2N, LaMP_3 .. LaMP_7.",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "Where to write the metrics JSON (default: beside preds).")


def main(argv):
  del argv
  from tapper_jax import metrics
  result = metrics.evaluate_files(_GOLDS.value, _PREDS.value, _TASK.value)
  out = _OUT.value or _PREDS.value.rsplit(".", 1)[0] + ".metrics.json"
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"task": metrics.canonical_task(_TASK.value), **result}, f, indent=2)
  for k, v in result.items():
    print(f"{k:14s} {v:.4f}")
  print(f"written to {out}")


if __name__ == "__main__":
  app.run(main)
