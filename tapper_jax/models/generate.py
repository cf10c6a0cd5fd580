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


def _inputs(model: LlamaForCausalLM, input_ids, attention_mask, inputs_embeds, eos_ids, pad_id):
  """(inputs_embeds [B,P,D], attention_mask [B,P], eos ids, pad id) with the model's defaults."""
  cfg = model.config
  if inputs_embeds is None:
    inputs_embeds = model.embed(jnp.asarray(input_ids))
  if attention_mask is None:
    attention_mask = jnp.ones(inputs_embeds.shape[:2], jnp.int32)
  eos = tuple(eos_ids) if eos_ids is not None else cfg.eos_token_ids
  if pad_id is None:
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
  return inputs_embeds, attention_mask, eos, pad_id


def greedy_generate(model: LlamaForCausalLM, input_ids=None, attention_mask=None, *,
                    max_new_tokens: int, inputs_embeds=None, eos_ids=None, pad_id=None):
  """Greedy continuation, [B, max_new_tokens] int32; after a row's EOS the rest is `pad_id`.

  Give `input_ids` [B,P] or `inputs_embeds` [B,P,D] (e.g. a soft prefix + embedded query),
  left-padded, with `attention_mask` [B,P].
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  inputs_embeds, attention_mask, eos, pad_id = _inputs(model, input_ids, attention_mask,
                                                       inputs_embeds, eos_ids, pad_id)
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, inputs_embeds, jnp.asarray(attention_mask),
                   jnp.asarray(eos if eos else (-1,), jnp.int32), max_new_tokens=max_new_tokens,
                   pad_id=int(pad_id))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams"))
def _beam_prefill(graphdef, state, inputs_embeds, attention_mask, *, max_new_tokens: int,
                  num_beams: int):
  """Prefill [B,P] once, then repeat rows to B*K beams: (log-probs [B*K,V], cache, mask)."""
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  b, p, _ = inputs_embeds.shape
  mask = jnp.concatenate([attention_mask.astype(jnp.int32),
                          jnp.zeros((b, max_new_tokens), jnp.int32)], axis=1)
  positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
  cache = init_cache(model.config, b, p + max_new_tokens)
  hidden, cache = model.hidden_states(inputs_embeds=inputs_embeds, attention_mask=mask,
                                      positions=positions, cache=cache, cache_index=0)
  logp = jax.nn.log_softmax(model.logits(hidden[:, -1]).astype(jnp.float32), axis=-1)
  rep = lambda x, axis: jnp.repeat(x, num_beams, axis=axis)  # noqa: E731
  return rep(logp, 0), {k: rep(v, 1) for k, v in cache.items()}, rep(mask, 0)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _beam_step(graphdef, state, tokens, beams, cache, mask, positions, slot):
  """Reorders the cache to the chosen beams [B*K], feeds their new tokens; log-probs [B*K,V]."""
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  cache = {k: jnp.take(v, beams, axis=1) for k, v in cache.items()}
  mask = jnp.take(mask, beams, axis=0).at[:, slot].set(1)
  hidden, cache = model.hidden_states(tokens[:, None], attention_mask=mask,
                                      positions=positions[:, None], cache=cache, cache_index=slot)
  return jax.nn.log_softmax(model.logits(hidden[:, 0]).astype(jnp.float32), axis=-1), cache, mask


def beam_search(model: LlamaForCausalLM, input_ids=None, attention_mask=None, *,
                num_beams: int, max_new_tokens: int, inputs_embeds=None, eos_ids=None,
                pad_id=None, length_penalty: float = 1.0) -> "np.ndarray":
  """Beam search as Hugging Face's `generate(num_beams=K, do_sample=False)` does it (its
  defaults: early_stopping=False, length_penalty=1.0): at each step the top 2K continuations
  of all beams; those ending in EOS (or reaching max_new_tokens) among the top K are finished,
  scored sum log p / generated_length ** length_penalty; the best K others run on. Stops when
  no running beam can beat the worst finished one. Returns the best sequence per row,
  [B, max_new_tokens] int32, padded with `pad_id` after its end.

  The model runs on device with a KV cache (reordered to the surviving beams each step); the
  bookkeeping is on the host. Shapes: B rows, K beams, V vocab, P prompt length.
  """
  import numpy as np
  if num_beams < 1 or max_new_tokens < 1:
    raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, "
                     f"{max_new_tokens}")
  inputs_embeds, attention_mask, eos, pad_id = _inputs(model, input_ids, attention_mask,
                                                       inputs_embeds, eos_ids, pad_id)
  graphdef, state = nnx.split(model)
  b, p = inputs_embeds.shape[:2]
  k, n = num_beams, max_new_tokens
  keep = max(2, 1 + len(eos)) * k
  logp, cache, mask = _beam_prefill(graphdef, state, inputs_embeds, jnp.asarray(attention_mask),
                                    max_new_tokens=n, num_beams=k)
  lengths = np.repeat(np.asarray(attention_mask).sum(-1), k)  # next rotary position per beam
  run_seq = np.full((b, k, n), pad_id, np.int64)
  run_score = np.zeros((b, k), np.float64)
  run_score[:, 1:] = -1e9
  fin_seq = np.full((b, k, n), pad_id, np.int64)
  fin_score = np.full((b, k), -1e9, np.float64)
  fin_done = np.zeros((b, k), bool)
  fin_len = np.zeros((b, k), np.int64)
  open_ = np.ones((b,), bool)  # HF's is_early_stop_heuristic_unsatisfied
  for t in range(n):
    lp = np.asarray(logp, np.float64).reshape(b, k, -1)
    v = lp.shape[-1]
    acc = (lp + run_score[:, :, None]).reshape(b, k * v)
    top = np.argsort(-acc, axis=1, kind="stable")[:, :keep]
    top_lp = np.take_along_axis(acc, top, axis=1)
    beam, tok = top // v, top % v
    seq = np.take_along_axis(run_seq, beam[:, :, None], axis=1)
    seq[:, :, t] = tok
    hits = np.isin(tok, eos) | (t + 1 >= n)
    # Finished: the top-K candidates that hit a stop, length-penalised, merged with the old.
    just = hits & (np.arange(keep) < k)[None]  # only the top K may finish
    cand = (top_lp / ((t + 1) ** length_penalty) - (~open_[:, None]) * 1e9 - (~just) * 1e9)
    merged_score = np.concatenate([fin_score, cand], axis=1)
    merged_seq = np.concatenate([fin_seq, seq], axis=1)
    merged_done = np.concatenate([fin_done, just], axis=1)
    merged_len = np.concatenate([fin_len, np.full((b, keep), t + 1)], axis=1)
    best = np.argsort(-merged_score, axis=1, kind="stable")[:, :k]
    fin_score = np.take_along_axis(merged_score, best, axis=1)
    fin_seq = np.take_along_axis(merged_seq, best[:, :, None], axis=1)
    fin_done = np.take_along_axis(merged_done, best, axis=1)
    fin_len = np.take_along_axis(merged_len, best, axis=1)
    # Running: the best K candidates that did not stop.
    alive = top_lp - hits * 1e9
    nxt = np.argsort(-alive, axis=1, kind="stable")[:, :k]
    run_seq = np.take_along_axis(seq, nxt[:, :, None], axis=1)
    run_score = np.take_along_axis(alive, nxt, axis=1)
    src_beam = np.take_along_axis(beam, nxt, axis=1)
    # HF's early-stop heuristic: can the best running beam still beat the worst finished one?
    best_possible = run_score[:, :1] / ((t + 1) ** length_penalty)
    worst = np.where(fin_done, fin_score.min(axis=1, keepdims=True), -1e9)
    open_ = open_ & np.any(best_possible > worst, axis=1)
    if not open_.any() or hits[:, :keep].all() or t + 1 >= n:
      break
    flat = (src_beam + np.arange(b)[:, None] * k).reshape(-1)
    tokens = run_seq[:, :, t].reshape(-1)
    logp, cache, mask = _beam_step(graphdef, state, jnp.asarray(tokens, jnp.int32),
                                   jnp.asarray(flat, jnp.int32), cache, mask,
                                   jnp.asarray(lengths + t, jnp.int32), p + t)
  out = fin_seq[:, 0].copy()
  for i in range(b):  # after the sequence's end (its EOS included) comes padding
    out[i, fin_len[i, 0]:] = pad_id
  return out.astype(np.int32)
