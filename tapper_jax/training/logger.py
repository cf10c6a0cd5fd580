"""What a user sees while training: a tqdm bar (rate, ETA), metrics to TensorBoard, the console
and a JSON-lines file (WORKDIR/metrics.jsonl).

While a bar is on screen, log lines are printed above it (through `tqdm.write`) instead of
being written over it: `bars_and_logs()` points absl's console stream there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax
from absl import logging


class _AboveBar:
  """A console stream that writes each line above the active tqdm bars (to `file`)."""

  def __init__(self, file):
    self.file = file

  def write(self, text: str) -> None:
    from tqdm import tqdm
    for line in text.rstrip("\n").split("\n"):
      if line:
        tqdm.write(line, file=self.file)

  def flush(self) -> None:
    self.file.flush()


@contextlib.contextmanager
def bars_and_logs(enabled: bool = True):
  """Within this context, log lines go above the progress bars rather than through them: absl's
  handler stream (where INFO lines go) and sys.stderr (where --logtostderr sends them) write
  through `tqdm.write`. Bars made before entering keep the real stderr."""
  if not enabled:
    yield
    return
  handler = getattr(logging.get_absl_handler(), "python_handler", None)
  old_stream = getattr(handler, "stream", None)
  old_stderr = sys.stderr
  if old_stream is not None:
    handler.stream = _AboveBar(old_stream)
  sys.stderr = _AboveBar(old_stderr)
  try:
    yield
  finally:
    sys.stderr = old_stderr
    if old_stream is not None:
      handler.stream = old_stream


def progress(iterable=None, *, total=None, desc: str, enabled: bool = True, unit: str = "it"):
  """A tqdm bar with rate and ETA for a slow loop (embedding, evaluation); silent if disabled."""
  from tqdm import tqdm
  return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
              dynamic_ncols=True, leave=False)


def encode_with_bar(encode, texts, *, enabled: bool = True):
  """encode(texts, progress=callback) under an "encode" bar (a sentence encoder's `encode`)."""
  with progress(total=len(texts), desc="encode", unit="text", enabled=enabled) as bar:
    return encode(texts, progress=bar.update)


class Logger:
  def __init__(self, logdir: str, *, total: int, initial: int, desc: str, enabled: bool = True,
               jsonl: str | None = None, writes: bool = True):
    """writes=False (processes other than 0 of a multi-process run): counts, writes nothing."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm
    self.writer = SummaryWriter(logdir) if writes else None
    jsonl = jsonl if writes else None
    self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                    dynamic_ncols=True)
    self.tokens, self.t0, self.first = 0, time.perf_counter(), True
    self.logged: list[dict] = []  # every logged metrics dict, with its step
    self.desc, self.jsonl = desc, jsonl
    if jsonl:
      os.makedirs(os.path.dirname(os.path.abspath(jsonl)), exist_ok=True)

  def step(self, step: int, tokens: int, metrics=None) -> None:
    """Counts a step; with `metrics` (device values) also fetches, logs and writes them."""
    self.bar.update(1)
    if metrics is None and not self.first:
      self.tokens += tokens
      return
    m = {k: float(v) for k, v in jax.device_get(metrics).items()} if metrics is not None else {}
    if self.first:  # the first step compiles: leave it out of the throughput
      self.first, self.tokens, self.t0 = False, 0, time.perf_counter()
      if metrics is None:
        return
      return self._write(step, m)
    self.tokens += tokens
    dt = time.perf_counter() - self.t0
    m["tokens_per_s"] = self.tokens / dt if dt > 0 else 0.0
    self.tokens, self.t0 = 0, time.perf_counter()
    self._write(step, m)

  def _write(self, step: int, m: dict) -> None:
    self.logged.append({"step": step, **m})
    for k, v in m.items():
      if self.writer is not None:
        self.writer.add_scalar(f"train/{k}", v, step)
    if self.jsonl:  # appended: a resumed run continues the same file
      with open(self.jsonl, "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": self.desc, "step": step, "time": time.time(), **m}) + "\n")
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m.get('tokens_per_s', 0):.0f}")
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())))

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
    self.bar.close()
