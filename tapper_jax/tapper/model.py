"""Composition: (P_u + P_q) prepended to the query's input embeddings as L soft tokens.

The LLM is frozen except for the LoRA factors attached to it (`nnx.LoRAParam`: the task LoRA in
stage 1, the shared bridge LoRA in stage 2). The loss is next-token cross-entropy on the target
tokens only: no loss on the prefix or the prompt, and logits are computed only at the target
positions (a [B,K,V] slab, not [B,L+T,V]).

Batch fields (B batch, T tokens, K target slots, H history slots, D hidden):
  input_ids [B,T] int32, attention_mask [B,T] (right padding)
  target_pos [B,K] int32: positions in input_ids of the tokens to predict; target_valid [B,K]
  user_row [B] int32 (-1 unknown); query_z [B,D]; hist_z [B,H,D]; hist_age [B,H]; hist_valid [B,H]
  unpad [U,N] (optional; only its shape is read): the LLM's per-token layers run on the real
  slots alone, in U groups of B/U rows, each with room for N tokens and its rows' prefixes
  (`models.llama.unpad_index`)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tapper_jax.models.llama import LlamaForCausalLM
from tapper_jax.tapper.attention import TemporalAttention
from tapper_jax.tapper.prefix import UserPrefixTable


class Tapper(nnx.Module):
  """P_u + P_q for a batch: [B,L,D]. Either part can be switched off (an ablation): without
  P_u no table is built, without P_q no attention."""

  def __init__(self, d: int, prefix_len: int, num_rows: int, *, user_prefix: bool = True,
               query_prefix: bool = True, time_decay: bool = True, order_decay: bool = True,
               chunk: int = 64, rngs: nnx.Rngs):
    if not (user_prefix or query_prefix):
      raise ValueError("TAP-PER needs P_u, P_q or both (for neither, build no Tapper)")
    self.attention = nnx.data(TemporalAttention(
        d, prefix_len, time_decay=time_decay, order_decay=order_decay, chunk=chunk, rngs=rngs)
        if query_prefix else None)
    self.users = nnx.data(UserPrefixTable(num_rows, prefix_len, d, rngs=rngs)
                          if user_prefix else None)
    self.prefix_len = prefix_len

  def __call__(self, batch, llm=None) -> jax.Array:
    del llm  # TAP-PER reads only the batch (another method's module may read the backbone)
    p = 0.0
    if self.attention is not None:
      p = p + self.attention(batch["query_z"], batch["hist_z"], batch["hist_age"],
                             batch["hist_valid"])
    if self.users is not None:
      p = p + self.users(batch["user_row"])
    return p


class PersonalizedLM(nnx.Module):
  """The frozen LLM (with its LoRA) and, in stage 2, the method's prefix module (TAP-PER's, or
  another method's: called as module(batch, llm) -> soft tokens [B,L,D])."""

  def __init__(self, llm: LlamaForCausalLM, tapper: Tapper | None):
    self.llm = llm
    self.tapper = nnx.data(tapper)

  @property
  def prefix_len(self) -> int:
    return 0 if self.tapper is None else self.tapper.prefix_len

  def inputs(self, batch):
    """(inputs_embeds [B,L+T,D], attention_mask [B,L+T]) with the soft prefix in front."""
    emb = self.llm.embed(batch["input_ids"])
    mask = batch["attention_mask"].astype(jnp.int32)
    if self.tapper is not None:
      prefix = self.tapper(batch, self.llm).astype(emb.dtype)
      emb = jnp.concatenate([prefix, emb], axis=1)
      mask = jnp.concatenate([jnp.ones(prefix.shape[:2], jnp.int32), mask], axis=1)
    return emb, mask


def target_nll(model: PersonalizedLM, batch, *, dropout_key=None, remat: bool = False):
  """(nll [B,K], weight [B,K]): each target token's next-token NLL and whether it is real."""
  emb, mask = model.inputs(batch)
  unpad = None
  if "unpad" in batch:
    groups, n = batch["unpad"].shape
    unpad = (groups, n + emb.shape[0] // groups * model.prefix_len)
  hidden, _ = model.llm.hidden_states(inputs_embeds=emb, attention_mask=mask,
                                      dropout_key=dropout_key, remat=remat, unpad=unpad)
  # The token at position p is predicted from the hidden state one slot before it.
  src = batch["target_pos"] - 1 + model.prefix_len
  h = jnp.take_along_axis(hidden, jnp.maximum(src, 0)[..., None], axis=1)  # [B,K,D]
  logits = model.llm.logits(h).astype(jnp.float32)  # [B,K,V]
  labels = jnp.take_along_axis(batch["input_ids"], batch["target_pos"], axis=1)
  gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - gold, batch["target_valid"].astype(jnp.float32)


def lm_loss(model: PersonalizedLM, batch, *, dropout_key=None, remat: bool = False):
  """Mean next-token NLL over the batch's target tokens; returns (loss, token count)."""
  nll, w = target_nll(model, batch, dropout_key=dropout_key, remat=remat)
  count = jnp.sum(w)
  return jnp.sum(nll * w) / jnp.maximum(count, 1.0), count
