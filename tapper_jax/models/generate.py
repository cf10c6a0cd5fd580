"""Greedy generation under one jit: prefill into a KV cache, then a fixed-length decode loop.

The cache holds prompt_len + max_new_tokens slots, so each (batch, prompt_len, max_new_tokens)
compiles once. Prompts are left-padded (`attention_mask` marks real tokens), so every row's last
prompt token sits in the last slot and its next-token logits come from one position.
Shapes: B batch, P prompt length, N new tokens, D hidden.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from tapper_jax.models.llama import LlamaForCausalLM, init_cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "pad_id"))
def _generate(graphdef, state, inputs_embeds, attention_mask, eos_ids, *, max_new_tokens: int,
              pad_id: int):
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  b, p, _ = inputs_embeds.shape
  n = max_new_tokens
  mask = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.zeros((b, n), jnp.int32)], axis=1)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
  cache = init_cache(model.config, b, p + n)
  hidden, cache = model.hidden_states(inputs_embeds=inputs_embeds, attention_mask=mask,
                                      positions=positions, cache=cache, cache_index=0)
  tok = jnp.argmax(model.logits(hidden[:, -1]).astype(jnp.float32), axis=-1).astype(jnp.int32)
  lengths = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)  # next rotary position per row
  out = jnp.full((b, n), pad_id, jnp.int32)
  done = jnp.zeros((b,), bool)

  def emit(i, tok, out, done):
    out = out.at[:, i].set(jnp.where(done, pad_id, tok))
    return out, done | jnp.isin(tok, eos_ids)

  def step(i, carry):
    tok, out, done, cache, mask = carry
    out, done = emit(i, tok, out, done)
    mask = mask.at[:, p + i].set(1)
    hidden, cache = model.hidden_states(tok[:, None], attention_mask=mask,
                                        positions=(lengths + i)[:, None], cache=cache,
                                        cache_index=p + i)
    nxt = jnp.argmax(model.logits(hidden[:, 0]).astype(jnp.float32), axis=-1).astype(jnp.int32)
    return nxt, out, done, cache, mask

  tok, out, done, cache, mask = jax.lax.fori_loop(0, n - 1, step, (tok, out, done, cache, mask))
  out, _ = emit(n - 1, tok, out, done)
  return out


def greedy_generate(model: LlamaForCausalLM, input_ids=None, attention_mask=None, *,
                    max_new_tokens: int, inputs_embeds=None, eos_ids=None, pad_id=None):
  """Greedy continuation, [B, max_new_tokens] int32; after a row's EOS the rest is `pad_id`.

  Give `input_ids` [B,P] or `inputs_embeds` [B,P,D] (e.g. a soft prefix + embedded query),
  left-padded, with `attention_mask` [B,P].
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  cfg = model.config
  if inputs_embeds is None:
    inputs_embeds = model.embed(jnp.asarray(input_ids))
  if attention_mask is None:
    attention_mask = jnp.ones(inputs_embeds.shape[:2], jnp.int32)
  eos = tuple(eos_ids) if eos_ids is not None else cfg.eos_token_ids
  if pad_id is None:
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, inputs_embeds, jnp.asarray(attention_mask),
                   jnp.asarray(eos if eos else (-1,), jnp.int32), max_new_tokens=max_new_tokens,
                   pad_id=int(pad_id))
