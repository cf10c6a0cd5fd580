"""Two-stage TAP-PER training and evaluation.

  python -m tapper_jax.train --config=configs/lamp2.py --workdir=DIR [--config.field=value ...]

`--config.stage=1|2|both`. Multi-process: on a Cloud TPU pod or under SLURM every process joins
by itself; elsewhere give `--coordinator=HOST:PORT --num_processes=N --process_id=I` to each
(launch/ has a script for each case). Thin absl entry point; the logic is
`tapper_jax.training.loop.train_and_evaluate`. Everything lands under DIR: backbone/,
stage{1,2}/checkpoints/, tensorboard/, predictions/, summary.json. Re-running the same command
resumes from the newest checkpoint. SIGTERM (a preemption notice) saves a checkpoint after the
current step and exits with status 75; the same command resumes.
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run's outputs go.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-process: process 0's HOST:PORT.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this one's index.")


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every file it renames at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def main(argv):
  del argv
  for h in pylogging.getLogger("absl").handlers + pylogging.getLogger().handlers:
    h.addFilter(_QuietOrbax())
  from tapper_jax.training import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from tapper_jax.training import faults, loop
  try:
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except faults.Preempted as e:
    logging.warning("%s", e)
    sys.exit(faults.PREEMPTED_EXIT)
  if not distributed.is_main():
    return
  logging.info("summary written to %s/summary.json", _WORKDIR.value)
  print(f"\n{summary['task']} on {summary['devices']}, {summary['minutes']} min in all, "
        f"{summary['eval'].get('questions', 0)} {summary['eval'].get('split')} questions\n")
  print(loop.table(summary))


if __name__ == "__main__":
  app.run(main)
