"""Text features a T-POP reward could read in place of the sentence encoder's embedding: the
frozen LLM's own final-norm hidden states of the text, mean-pooled or at its last token
(benchmarks/tpop_features.py asks which of them lets a reward learn each hidden rule)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

POOLS = ("mean", "last")


@functools.partial(jax.jit, static_argnames=("graphdef", "pool"))
def _pooled(graphdef, state, ids, mask, pool: str):
  """ids, mask [B,T] (right-padded) -> [B,D] float32."""
  h, _ = nnx.merge(graphdef, state).hidden_states(ids, attention_mask=mask)
  h = h.astype(jnp.float32)
  m = mask.astype(jnp.float32)[..., None]
  if pool == "mean":
    return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  last = jnp.maximum(mask.sum(1) - 1, 0)
  return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def llm_features(llm, tok, texts: list[str], pool: str = "mean", batch: int = 64,
                 max_tokens: int = 48) -> np.ndarray:
  """[N,D] features of `texts` (each tokenized alone, BOS where the tokenizer adds one, cut to
  `max_tokens`), batches right-padded to a power-of-two length (few compilations)."""
  from tapper_jax.models.tokenizer import bucket_length
  if pool not in POOLS:
    raise ValueError(f"pool {pool!r}: choose from {POOLS}")
  graphdef, state = nnx.split(llm)
  out = []
  for s in range(0, len(texts), batch):
    ids = [tok.encode(t, add_bos=True)[:max_tokens] or [tok.eos_id] for t in texts[s:s + batch]]
    rows, mask = tok.pad(ids, side="right", length=bucket_length(max(map(len, ids)), smallest=8))
    rows = np.pad(rows, ((0, batch - len(ids)), (0, 0)))  # one batch shape for every call
    mask = np.pad(mask, ((0, batch - len(ids)), (0, 0)))
    pooled = _pooled(graphdef, state, jnp.asarray(rows), jnp.asarray(mask), pool)
    out.append(np.asarray(pooled)[:len(ids)])
  return np.concatenate(out) if out else np.zeros((0, llm.config.hidden_size), np.float32)
