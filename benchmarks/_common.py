"""Shared by the speed benchmarks: model folders resolved off the accelerator, median timing."""

import os
import statistics
import subprocess
import sys
import time


def resolve_model(name: str) -> str:
  """models.registry.resolve(name) in a CPU-only child process: writing a random-weight folder
  (random:SHAPE) must not leave the parent holding accelerator memory (JAX preallocates) while
  the benchmark's sides run in their own processes."""
  code = "import sys; from tapper_jax.models import registry; print(registry.resolve(sys.argv[1]))"
  p = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if p.returncode:
    raise SystemExit(f"model {name!r}: {p.stderr[-2000:]}")
  return p.stdout.strip().splitlines()[-1]


def median_time(fn, repeats: int, sync=lambda: None, warmup: int = 1) -> float:
  """Median seconds of `repeats` calls of fn() (each ended by sync()), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  sync()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - t)
  return statistics.median(times)
