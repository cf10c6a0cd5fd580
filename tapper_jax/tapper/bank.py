"""The record bank: every record and query embedded once, on the host.

TAP-PER's z = mean of the frozen LLM's *input token embeddings* over the first `max_tokens` tokens of the
text (no forward pass), so the bank costs one table lookup per token and never changes while
stage 2 trains (the bridge LoRA touches q/k/v/o, not the embedding table).

Shapes: N records, D hidden, B batch, H history slots.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np


def embed_texts(texts: Sequence[str], tokenizer, embedding: np.ndarray, *,
                max_tokens: int = 128) -> np.ndarray:
  """[N, D] float32: the mean input embedding of each text's first `max_tokens` tokens.

  An empty text embeds as zeros (it has no tokens to average).
  """
  if max_tokens <= 0:
    raise ValueError(f"max_tokens must be positive, got {max_tokens}")
  from tapper_jax.data.prompts import char_cap
  emb = np.asarray(embedding, np.float32)
  out = np.zeros((len(texts), emb.shape[1]), np.float32)
  cap = char_cap(tokenizer, max_tokens)  # a huge record is cut before tokenizing
  texts = [t[:cap] if cap else t for t in texts]
  for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
    ids = ids[:max_tokens]
    if ids:
      out[i] = emb[np.asarray(ids)].mean(axis=0)
  return out


def mean_embedder(tokenizer, embedding: np.ndarray, max_tokens: int = 128):
  """texts -> embed_texts(texts, ...): TAP-PER's z, as the callable RecordBank.build takes."""
  return functools.partial(embed_texts, tokenizer=tokenizer, embedding=embedding,
                           max_tokens=max_tokens)


@dataclasses.dataclass
class RecordBank:
  """Each user's records, oldest first, in one [N, D] array; `index` finds a record's row."""
  z: np.ndarray  # [N, D] float32
  day: np.ndarray  # [N] float64, days since 1970-01-01
  index: dict[tuple[str, str], int]  # (user id, record id) -> row of z

  @classmethod
  def build(cls, users: dict[str, Sequence[tuple[str, str, float]]],
            embed: Callable[[list[str]], np.ndarray]) -> "RecordBank":
    """users: user id -> [(record id, text, day)], any order; duplicate record ids kept once.
    embed: texts -> [N, D] float32 ([0, D] for no texts), e.g. `mean_embedder(...)` (TAP-PER)
    or a sentence encoder's `encode` (PPlug)."""
    texts, days, index = [], [], {}
    for uid, records in users.items():
      for rid, text, day in sorted(records, key=lambda r: r[2]):  # stable within a day
        if (uid, rid) not in index:
          index[(uid, rid)] = len(texts)
          texts.append(text)
          days.append(day)
    z = np.asarray(embed(texts), np.float32)
    return cls(z.reshape(len(texts), z.shape[-1]), np.asarray(days, np.float64), index)

  def rows(self, user: str, record_ids: Sequence[str]) -> np.ndarray:
    """Rows of `user`'s records, in the order given (an example's history, oldest first)."""
    try:
      return np.asarray([self.index[(user, r)] for r in record_ids], np.int64)
    except KeyError as e:
      raise KeyError(f"record {e.args[0]} is not in the record bank") from None

  def gather(self, rows: Sequence[np.ndarray], query_days: Sequence[float],
             max_history: int) -> dict[str, np.ndarray]:
    """Pads each example's history rows to H = max_history (left-aligned, oldest first).

    Returns hist_z [B,H,D] float32, hist_age [B,H] float32 (days from the record to the query;
    the model floors it at 0) and hist_valid [B,H] bool (False = padding). Ages are taken in
    float64 first, so absolute dates lose no precision.
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
