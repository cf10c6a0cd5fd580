"""Leaderboard predictions for any LaMP questions file from a trained workdir.

  python -m tapper_jax.predict --workdir=DIR --questions=test_questions.json [--out=preds.json]

Users may be mixed in every batch; users without a trained row run cold and are counted. Golds
are optional (scored when {split}_outputs.json sits beside the questions). Thin absl entry
point; the logic is `tapper_jax.serving.predict.predict_file`.
"""

import json
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_QUESTIONS = flags.DEFINE_string("questions", None, "A LaMP {split}_questions.json file.",
                                 required=True)
_OUT = flags.DEFINE_string("out", None, "Output file (default WORKDIR/predictions/"
                           "predict_<questions file name>); never overwritten.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Questions per generation batch (0: the run's).")
_BEAMS = flags.DEFINE_integer("num_beams", 0, "Beam search width (0: the run's; 1: greedy).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def main(argv):
  del argv
  from tapper_jax.serving.predict import predict_file
  out = _OUT.value or os.path.join(_WORKDIR.value, "predictions",
                                   "predict_" + os.path.basename(_QUESTIONS.value))
  result = predict_file(_WORKDIR.value, _QUESTIONS.value, out, batch_size=_BATCH.value,
                        num_beams=_BEAMS.value, progress=not _QUIET.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
