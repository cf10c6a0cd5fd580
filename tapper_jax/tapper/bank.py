"""The record bank: every record and query embedded once, on the host.

z = mean of the frozen LLM's *input token embeddings* over the first `max_tokens` tokens of the
text (no forward pass), so the bank costs one table lookup per token and never changes while
stage 2 trains (the bridge LoRA touches q/k/v/o, not the embedding table).

Shapes: N records, D hidden, B batch, H history slots.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def embed_texts(texts: Sequence[str], tokenizer, embedding: np.ndarray, *,
                max_tokens: int = 128) -> np.ndarray:
  """[N, D] float32: the mean input embedding of each text's first `max_tokens` tokens.

  An empty text embeds as zeros (it has no tokens to average).
  """
  if max_tokens <= 0:
    raise ValueError(f"max_tokens must be positive, got {max_tokens}")
  emb = np.asarray(embedding, np.float32)
  out = np.zeros((len(texts), emb.shape[1]), np.float32)
  for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
    ids = ids[:max_tokens]
    if ids:
      out[i] = emb[np.asarray(ids)].mean(axis=0)
  return out


@dataclasses.dataclass
class RecordBank:
  """Each user's records, oldest first, in one [N, D] array with per-user [start, end) spans."""
  z: np.ndarray  # [N, D] float32
  day: np.ndarray  # [N] float64, days since 1970-01-01
  spans: dict[str, tuple[int, int]]  # user id -> [start, end) rows of z, sorted by day

  @classmethod
  def build(cls, users: dict[str, Sequence[tuple[str, str, float]]], tokenizer,
            embedding: np.ndarray, *, max_tokens: int = 128) -> "RecordBank":
    """users: user id -> [(record id, text, day)], any order; duplicate record ids kept once."""
    texts, days, spans = [], [], {}
    for uid, records in users.items():
      seen, rows = set(), []
      for rid, text, day in records:
        if rid not in seen:
          seen.add(rid)
          rows.append((day, text))
      rows.sort(key=lambda r: r[0])  # stable: same-day records keep their given order
      spans[uid] = (len(texts), len(texts) + len(rows))
      texts.extend(t for _, t in rows)
      days.extend(d for d, _ in rows)
    z = embed_texts(texts, tokenizer, embedding, max_tokens=max_tokens)
    d = z.shape[1] if len(texts) else np.asarray(embedding).shape[1]
    return cls(z.reshape(-1, d), np.asarray(days, np.float64), spans)

  def history(self, user: str, before_day: float | None, max_history: int) -> np.ndarray:
    """Row ids of `user`'s newest `max_history` records strictly older than `before_day`
    (all of them when it is None), oldest first. An unknown user has none."""
    if user not in self.spans:
      return np.zeros((0,), np.int64)
    start, end = self.spans[user]
    if before_day is not None:
      end = start + int(np.searchsorted(self.day[start:end], before_day, side="left"))
    return np.arange(max(start, end - max_history), end, dtype=np.int64)

  def gather(self, rows: Sequence[np.ndarray], query_days: Sequence[float],
             max_history: int) -> dict[str, np.ndarray]:
    """Pads each example's history rows to H = max_history (left-aligned, oldest first).

    Returns hist_z [B,H,D] float32, hist_age [B,H] float32 (days from the record to the query:
    > 0 for older records; the model masks the rest) and hist_valid [B,H] bool (False = padding).
    Ages are taken in float64 first, so absolute dates lose no precision.
    """
    b, h, d = len(rows), max_history, self.z.shape[1]
    hz = np.zeros((b, h, d), np.float32)
    age = np.zeros((b, h), np.float32)
    valid = np.zeros((b, h), bool)
    for i, (r, qday) in enumerate(zip(rows, query_days)):
      n = len(r)
      if n > h:
        raise ValueError(f"example {i}: {n} history rows exceed max_history={h}")
      hz[i, :n] = self.z[r]
      age[i, :n] = qday - self.day[r]
      valid[i, :n] = True
    return {"hist_z": hz, "hist_age": age, "hist_valid": valid}
