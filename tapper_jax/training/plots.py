"""Pictures of a run, written to WORKDIR/plots/ at its end (matplotlib, Agg backend):
training curves, the results bars, the learned decay (weight factor against a record's age in
days and its order gap), and for a few evaluated questions the attention over the user's history
on a time axis (record dates, weights, the query date: why this user got this answer)."""

from __future__ import annotations

import datetime
import json
import os

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _date(day: float) -> datetime.date:
  return datetime.date(1970, 1, 1) + datetime.timedelta(days=float(day))


def training_curves(metrics_jsonl: str, path: str) -> bool:
  """Loss and gradient norm against step, one line per stage. False if nothing was logged."""
  if not os.path.isfile(metrics_jsonl):
    return False
  rows = [json.loads(x) for x in open(metrics_jsonl, encoding="utf-8") if x.strip()]
  if not rows:
    return False
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for stage in sorted({r["stage"] for r in rows}):
    mine = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["step"])
    for ax, key in zip(axes, ("loss", "grad_norm")):
      ax.plot([r["step"] for r in mine], [r.get(key, np.nan) for r in mine], label=stage)
  for ax, key in zip(axes, ("loss", "grad norm")):
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def results_bars(summary: dict, path: str) -> bool:
  rows = {k: v for k, v in summary.get("eval", {}).items() if isinstance(v, dict) and v}
  if not rows:
    return False
  metric = next(iter(next(iter(rows.values()))))
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
  names = list(rows)
  ax.barh(range(len(names)), [rows[n][metric] for n in names], color="tab:blue")
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel(metric)
  ax.set_title(f"{summary.get('task')} ({summary['eval'].get('split')}, "
               f"{summary['eval'].get('questions')} questions)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def decay_curves(lambda_t: float, lambda_o: float, path: str) -> None:
  """exp(-lambda log(1 + x)) = (1 + x)^-lambda: the factor a record's score gets from its age
  (days) and its order gap, relative to a record of the query's own day / the newest record."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  dt = np.linspace(0, 3650, 200)
  gap = np.arange(1, 201)
  axes[0].plot(dt, (1 + dt) ** -lambda_t)
  axes[0].set_xlabel("age of the record (days)")
  axes[0].set_title(f"time decay, lambda_t = {lambda_t:+.4f}")
  axes[1].plot(gap, (1 + gap) ** -lambda_o / 2 ** -lambda_o)
  axes[1].set_xlabel("order gap (1 = newest record)")
  axes[1].set_title(f"order decay, lambda_o = {lambda_o:+.4f}")
  for ax in axes:
    ax.set_ylabel("weight factor")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def attention_timeline(record_days, weights, query_day: float, title: str, path: str,
                       labels=None) -> None:
  """The weights over a user's history on a time axis, the query's date marked."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(9, 3.5))
  dates = [_date(d) for d in record_days]
  ax.vlines(dates, 0, weights, color="tab:blue", alpha=0.7)
  ax.plot(dates, weights, "o", color="tab:blue", markersize=3)
  ax.axvline(_date(query_day), color="tab:red", linestyle="--", label="query date")
  if labels is not None:
    for i in np.argsort(weights)[::-1][:3]:  # name the three records it attends to most
      ax.annotate(str(labels[i])[:40], (dates[i], weights[i]), fontsize=7, rotation=15)
  ax.set_ylabel("attention weight")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="best")
  fig.autofmt_xdate()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def history_weights(model, fields: dict):
  """(record days offsets as ages, weights [n]) of one example's visible history, from its
  fields (query_z, hist_z, hist_age, hist_valid); None when the model has no attention."""
  attention = getattr(getattr(model, "tapper", None), "attention", None)
  if attention is None:
    return None
  import jax.numpy as jnp
  valid = np.asarray(fields["hist_valid"], bool)
  w = attention.weights(*(jnp.asarray(fields[k])[None] for k in
                          ("query_z", "hist_z", "hist_age", "hist_valid")))
  return np.asarray(fields["hist_age"])[valid], np.asarray(w)[0][valid]


def write_run_plots(workdir: str, summary: dict, model=None, examples=(), fields=None,
                    samples: int = 4) -> list[str]:
  """Every picture of a run into WORKDIR/plots/; returns the files written."""
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  written = []
  p = os.path.join(out, "training_curves.png")
  if training_curves(os.path.join(workdir, "metrics.jsonl"), p):
    written.append(p)
  p = os.path.join(out, "results.png")
  if results_bars(summary, p):
    written.append(p)
  s2 = summary.get("stages", {}).get("2", {})
  if "lambda_t" in s2:
    p = os.path.join(out, "decay.png")
    decay_curves(s2["lambda_t"], s2["lambda_o"], p)
    written.append(p)
  if model is not None and fields is not None:
    seen = set()
    for i, e in enumerate(examples):
      if len(seen) >= samples:
        break
      if e.user in seen or not e.history:
        continue
      got = history_weights(model, fields.fields(i))
      if got is None:
        break
      seen.add(e.user)
      ages, w = got
      p = os.path.join(out, f"attention_{len(seen)}.png")
      attention_timeline(e.day - ages, w, e.day, f"user {e.user}, question {e.id}: "
                         f"gold {e.target!r}", p)
      written.append(p)
  return written
