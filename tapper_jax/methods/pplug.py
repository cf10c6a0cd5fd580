"""PPlug (persona plug; Liu et al. 2024, github.com/rucliujn/PPlug) in the harness.

Every history record and every query is embedded once by a frozen sentence encoder (ours:
all-MiniLM-L6-v2). For a query q with the user's visible history h_1..h_n:

  w_j     = softmax_j(e_q . e_j) over the history (padding and records dated after q masked)
  persona = sum_j w_j MLP(e_j)            MLP: Linear(E -> D), GELU, Linear(D -> D)
  tokens  = [instruction; persona], each rescaled to norm s, prepended to the prompt

s is a computed statistic: the mean L2 norm of the frozen LLM's input-embedding rows, so the
two soft tokens sit at the norm the LLM's own tokens have. The instruction token is one learned
vector shared by all users. Only the MLP and the instruction token train: the backbone (stage 1's
merged LLM) and the encoder stay frozen, and there are no per-user parameters, so a user never
seen in training gets a persona from the embeddings of their history alone.

Where we differ from the public code, and why:
- It keeps the last 512 history ids in *file* order (LaMP profiles are not in time order); we
  attend over the whole visible history sorted by date (`stage2.max_history` caps it).
- It scales by the constants 539.9738 and 539.9738 / 7 (FlanT5-XXL-specific); we normalise to s.
- It fine-tunes the query encoder (bge-base) while the history embeddings stay fixed; ours is
  frozen on both sides, so e_q and e_j stay in one space and the bank is embedded once.
- Its instruction vector passes through a second MLP; ours is the learned token itself (the
  same function class: a free vector in the LLM's input space).
- A user with no history makes its softmax NaN; ours gives a zero persona token.

Einsum letters: B batch, H history slots, E encoder width, D LLM width.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax.methods.base import Fields, Method
from tapper_jax.tapper.attention import Dense

_NEG = -1e30


def token_norm(llm) -> jax.Array:
  """s: the mean L2 norm of the LLM's input-embedding rows (a scalar)."""
  table = llm.model.embed_tokens.embedding[...].astype(jnp.float32)
  return jnp.mean(jnp.linalg.norm(table, axis=-1))


def _to_norm(x, s):
  """x rescaled to norm s along the last axis; a zero vector (no history) stays zero, with a
  zero gradient (norm's gradient at 0 is NaN, so the zero case never reaches the sqrt)."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  nonzero = sq > 0
  return jnp.where(nonzero, x * (s * jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0))), 0.0)


class PersonaPlug(nnx.Module):
  """[instruction; persona] soft tokens [B,2,D] from the batch's encoder embeddings."""

  prefix_len = 2

  def __init__(self, enc_dim: int, d: int, *, rngs: nnx.Rngs):
    self.mlp_in = Dense(enc_dim, d, ("pplug_in", "pplug_hidden"), rngs=rngs)
    self.mlp_out = Dense(d, d, ("pplug_hidden", "embed"), rngs=rngs)
    self.instruction = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32)
                                 / np.sqrt(d))

  def weights(self, query_z, hist_z, hist_age, hist_valid):
    """w [B,H]: softmax of e_q . e_j over valid, not-newer-than-the-query records (rows sum to
    1, or to 0 with none)."""
    ok = hist_valid & (hist_age >= 0)
    logits = jnp.where(ok, jnp.einsum("be,bhe->bh", query_z, hist_z), _NEG)
    w = jax.nn.softmax(logits, axis=-1)
    return jnp.where(ok.any(-1, keepdims=True), w, 0.0) * ok

  def __call__(self, batch, llm) -> jax.Array:
    s = token_norm(llm)
    w = self.weights(batch["query_z"], batch["hist_z"], batch["hist_age"], batch["hist_valid"])
    projected = self.mlp_out(jax.nn.gelu(self.mlp_in(batch["hist_z"]), approximate=False))
    persona = _to_norm(jnp.einsum("bh,bhd->bd", w, projected), s)
    inst = jnp.broadcast_to(_to_norm(self.instruction[...], s), persona.shape)
    return jnp.stack([inst, persona], axis=1)


class PPlugMethod(Method):
  """PPlug: no table; its fields are the encoder's query and history embeddings."""

  name = "pplug"

  def __init__(self, config):
    super().__init__(config)
    self._bank = self._encoder = None

  def encoder(self):
    if self._encoder is None:
      from tapper_jax.models import registry
      from tapper_jax.models.bert import SentenceEncoder
      self._encoder = SentenceEncoder.from_pretrained(registry.encoder_folder(self.config.encoder))
    return self._encoder

  def encode(self, texts) -> np.ndarray:
    """[N, E] embeddings of `texts`, with a progress bar (rate, ETA) when config.progress."""
    from tapper_jax.training.logger import encode_with_bar
    return encode_with_bar(self.encoder().encode, texts, enabled=bool(self.config.progress))

  def encoder_dim(self) -> int:
    from tapper_jax.models import registry
    from tapper_jax.models.bert import BertConfig
    return BertConfig.from_pretrained(registry.encoder_folder(self.config.encoder)).hidden_size

  def prefix_module(self, d: int, num_rows: int, rngs: nnx.Rngs) -> nnx.Module | None:
    return PersonaPlug(self.encoder_dim(), d, rngs=rngs) if self.config.stage2.prefix else None

  def fields(self, examples: Sequence, plan, tokenizer, llm, id_map: dict,
             slots_from: Sequence[Sequence] = ()) -> Fields | None:
    if not self.config.stage2.prefix:
      return None
    from tapper_jax.training import examples as ex
    s2 = self.config.stage2
    encode = self.encode
    if self._bank is None:
      self._bank = ex.build_bank(plan.spec, [plan.stage1_qs, plan.eval_qs], encode)
    slots = ex.history_slots([examples, *slots_from], s2.max_history, s2.attention_chunk)
    return ex.HistoryFields(examples, self._bank, ex.embed_queries(examples, encode), {},
                            slots, s2.max_history)
