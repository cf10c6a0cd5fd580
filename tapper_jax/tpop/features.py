"""Text features a T-POP reward can read in place of the sentence encoder's embedding: the
frozen LLM's own final-norm hidden states of the text alone (BOS + its tokens), mean-pooled or
at its last token. `LLMTextEncoder` has the sentence encoder's interface (`encode`, `dim`), so
the decoder, the rounds and the benchmarks take either (`load_encoder`: config.encoder
"llm:mean" or "llm:last"); benchmarks/tpop_features.py measures which lets a reward learn each
hidden rule."""

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


class LLMTextEncoder:
  """texts -> [N,D] pooled hidden states of the frozen LLM, each text tokenized alone (BOS where
  the tokenizer has one, cut to `max_tokens`, an empty text read as EOS). Batches are
  right-padded to power-of-two rows and lengths (few compilations)."""

  def __init__(self, llm, tokenizer, pool: str = "mean", batch_size: int = 64,
               max_tokens: int = 48):
    if pool not in POOLS:
      raise ValueError(f"pool {pool!r}: choose from {POOLS}")
    self.tokenizer, self.pool = tokenizer, pool
    self.batch_size, self.max_tokens = batch_size, max_tokens
    self.graphdef, self.state = nnx.split(llm)
    self.dim = llm.config.hidden_size

  def _embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(_pooled(self.graphdef, self.state, jnp.asarray(ids), jnp.asarray(mask),
                              self.pool))

  def encode(self, texts, *, progress=None) -> np.ndarray:
    del progress  # the sentence encoder's keyword; a few texts a call here
    from tapper_jax.models.tokenizer import bucket_length
    tok, out = self.tokenizer, []
    for s in range(0, len(texts), self.batch_size):
      ids = [tok.encode(str(t), add_bos=True)[:self.max_tokens] or [tok.eos_id]
             for t in texts[s:s + self.batch_size]]
      rows, mask = tok.pad(ids, side="right", length=bucket_length(max(map(len, ids)), smallest=8))
      pad = bucket_length(len(ids), smallest=8, largest=self.batch_size) - len(ids)
      rows, mask = np.pad(rows, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
      out.append(self._embed(rows, mask)[:len(ids)])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def load_encoder(name: str, llm, tokenizer, batch_size: int = 128):
  """The text encoder a T-POP config names: "llm:mean" / "llm:last" (the frozen LLM's own
  states, above) or a sentence encoder (registry name or folder)."""
  if name.startswith("llm:"):
    return LLMTextEncoder(llm, tokenizer, name.split(":", 1)[1])
  from tapper_jax.models import registry
  from tapper_jax.models.bert import SentenceEncoder
  return SentenceEncoder.from_pretrained(registry.encoder_folder(name), batch_size=batch_size)
