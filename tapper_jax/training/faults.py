"""Faults a run survives or reports: a preemption notice (SIGTERM) and a non-finite loss.

A SIGTERM while training asks the loop to save a checkpoint after the current step and raise
`Preempted`; the entry point exits with `PREEMPTED_EXIT` (75, EX_TEMPFAIL) so a scheduler can
tell a preemption from a failure, and the same command resumes. A non-finite loss or gradient
stops the run with `NonFiniteError`: the step, the batch's example ids and a snapshot of the
batch (WORKDIR/debug/stageN_stepS/) so it can be replayed; the bad update was never applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import numpy as np

PREEMPTED_EXIT = 75
# A run writes a merged backbone (SmolLM2: ~0.5 GB in fp32), checkpoints and predictions:
# below this much free space it would fail mid-way, so it is refused before any training.
MIN_FREE_BYTES = 2 << 30


class WorkdirError(OSError):
  """The workdir cannot hold a run (not writable, or too little free space)."""


def check_workdir(workdir: str, min_free: int) -> None:
  """Creates `workdir` and proves it writable with room to spare, before any model loads."""
  import shutil
  import tempfile
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-") as f:
      f.write(b"x")
      f.flush()
  except OSError as e:
    raise WorkdirError(f"{workdir}: not writable ({e.strerror or e}); choose another --workdir")
  free = shutil.disk_usage(workdir).free
  if free < min_free:
    raise WorkdirError(f"{workdir}: {free / 2**30:.2f} GiB free, a run needs at least "
                       f"{min_free / 2**30:.1f} GiB (backbone, checkpoints); free space or "
                       "choose another --workdir")


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the last finished step was saved."""


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient was NaN or infinite."""


class _Flag:
  requested = False


@contextlib.contextmanager
def sigterm_requests():
  """Yields a flag whose `requested` turns True when SIGTERM arrives (main thread only; other
  threads cannot install handlers and get a flag that stays False)."""
  flag = _Flag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):
    del signum, frame
    flag.requested = True

  old = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, old)


def non_finite(step: int, host_batch: dict, metrics, workdir: str, stage: int, example_ids):
  """Writes the debug snapshot of a non-finite step and raises NonFiniteError."""
  import jax
  folder = os.path.join(workdir, "debug", f"stage{stage}_step{step}")
  os.makedirs(folder, exist_ok=True)
  index = [int(i) for i in np.asarray(host_batch.get("index", []))]
  ids = [example_ids[i] for i in index] if example_ids is not None else index
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  np.savez(os.path.join(folder, "batch.npz"), **{k: np.asarray(v) for k, v in host_batch.items()})
  with open(os.path.join(folder, "info.json"), "w", encoding="utf-8") as f:
    json.dump({"stage": stage, "step": step, "example_ids": ids, "metrics": values}, f, indent=2)
  raise NonFiniteError(f"stage {stage} step {step}: non-finite loss or gradient (loss="
                       f"{values.get('loss')}, grad_norm={values.get('grad_norm')}); batch "
                       f"examples {ids}; snapshot in {folder}. The update was not applied and "
                       "no checkpoint holds it.")
