"""Multi-process JAX: start-up, and which process writes.

One process per host (or per GPU), all running the same program: jax.distributed joins them
into one runtime, each process drives its own devices, and a jitted step is one SPMD program
over all of them. `initialize` starts it from explicit coordinator flags, or auto-detects a
Cloud TPU pod or a SLURM job (JAX reads their environment); a single process needs nothing.
On CPU the processes' collectives go through gloo.
"""

from __future__ import annotations

import contextlib
import os

import jax


def _auto_detected() -> bool:
  """A cluster JAX can join without flags: SLURM with several tasks, or a Cloud TPU pod."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the processes of a multi-process run; returns whether it did. Call before any
  other JAX use. With no arguments it joins only where the cluster is auto-detected."""
  if coordinator is None and not _auto_detected():
    return False
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  return True


def is_main() -> bool:
  """Process 0 writes the run's files (logs, summaries, predictions); every process saves its
  part of a checkpoint."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """All processes wait here (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_first(name: str):
  """Process 0 runs the body (e.g. writes a shared file) before the others run it (and find
  the file written)."""
  if is_main():
    yield
    sync(name)
  else:
    sync(name)
    yield
