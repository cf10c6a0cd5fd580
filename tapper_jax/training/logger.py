"""What a user sees while training: a tqdm bar (rate, ETA) and metrics to TensorBoard + console."""

from __future__ import annotations

import time

import jax
from absl import logging


class Logger:
  def __init__(self, logdir: str, *, total: int, initial: int, desc: str, enabled: bool = True):
    from tensorboardX import SummaryWriter
    from tqdm import tqdm
    self.writer = SummaryWriter(logdir)
    self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                    dynamic_ncols=True)
    self.tokens, self.t0, self.first = 0, time.perf_counter(), True
    self.logged: list[dict] = []  # every logged metrics dict, with its step

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
      self.writer.add_scalar(f"train/{k}", v, step)
    self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m.get('tokens_per_s', 0):.0f}")
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())))

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
    self.bar.close()
