"""T-POP's two-arm decoding on our frozen Flax LLM, one KV cache for both arms.

Both arms decode the same prompt as the two rows of one batch (prefill once, then one cached
step per token). At each step the candidates are the union of both arms' top-k next tokens;
every (arm, candidate) continuation is embedded by the sentence encoder and scored by the
user's reward model in one batched call. Then
  arm 1 (exploit):  argmax_c  log p(c | x1) + w sigmoid(r(x1 + c))
  arm 2 (explore):  argmax_c  log p(c | x2) + w sigmoid(r(x2 + c)) + nu bonus(x2 + c; x1 + c1)
with c1 arm 1's choice and bonus the dueling-bandit term (reward.UserRewardModel.bonus); while
arm 2's text equals arm 1's, c1 is excluded from arm 2's candidates, so the two responses
differ. With w = 0 and nu = 0, arm 1 is greedy decoding. No LLM weight changes.

Shapes: A arms (2), P prompt length, N new tokens, V vocabulary, C candidates, E embedding.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax.models.llama import LlamaForCausalLM, init_cache
from tapper_jax.tpop import reward as reward_lib


@functools.partial(jax.jit, static_argnames=("graphdef", "length"))
def _prefill(graphdef, state, ids, mask, *, length):
  """(log-probs [A,V] of the next token, cache) for left-padded prompts ids [A,P]."""
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  a, p = ids.shape
  cache = init_cache(model.config, a, length)
  kv = jnp.concatenate([mask, jnp.zeros((a, length - p), mask.dtype)], axis=1)
  pos = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  h, cache = model.hidden_states(ids, attention_mask=kv, positions=pos, cache=cache, cache_index=0)
  return jax.nn.log_softmax(model.logits(h[:, -1]).astype(jnp.float32)), cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, state, tok, cache, kv_mask, positions, index):
  """One cached step: tokens [A] at slot `index` -> (log-probs [A,V], cache)."""
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  h, cache = model.hidden_states(tok[:, None], attention_mask=kv_mask, positions=positions[:, None],
                                 cache=cache, cache_index=index)
  return jax.nn.log_softmax(model.logits(h[:, 0]).astype(jnp.float32)), cache


@jax.jit
def _scores(params, emb, v_inv, ref, logp, w, nu):
  """Exploit and explore scores [C] of candidates (embeddings [C,E]) for one arm."""
  exploit = logp + w * jax.nn.sigmoid(reward_lib.reward(params, emb))
  return exploit, exploit + nu * reward_lib.bonus(params, emb, ref, v_inv)


@dataclasses.dataclass
class Responses:
  exploit: str
  explore: str
  exploit_ids: list
  explore_ids: list
  seconds: float
  tokens: int  # tokens generated over both arms


class TwoArmDecoder:
  def __init__(self, llm: LlamaForCausalLM, tokenizer, encoder, *, top_k: int = 40,
               w: float = 1.0, nu: float = 1.0, max_new_tokens: int = 32):
    self.llm, self.tokenizer, self.encoder = llm, tokenizer, encoder
    self.top_k, self.w, self.nu, self.max_new_tokens = top_k, w, nu, max_new_tokens
    self.graphdef, self.state = nnx.split(llm)
    self.eos = set(llm.config.eos_token_ids)

  def embed_candidates(self, prefixes: list[list[int]], candidates: np.ndarray) -> np.ndarray:
    """[A*C, E]: every arm's text extended by every candidate token, embedded in one call."""
    texts = [self.tokenizer.decode(p + [int(c)]) for p in prefixes for c in candidates]
    return self.encoder.encode(texts)

  def generate(self, prompt_ids: list[int], rm: reward_lib.UserRewardModel) -> Responses:
    t0 = time.perf_counter()
    n, p = self.max_new_tokens, len(prompt_ids)
    ids = jnp.asarray([prompt_ids, prompt_ids], jnp.int32)
    mask = jnp.ones((2, p), jnp.int32)
    logp, cache = _prefill(self.graphdef, self.state, ids, mask, length=p + n)
    kv = np.concatenate([np.ones((2, p), np.int32), np.zeros((2, n), np.int32)], axis=1)
    out: list[list[int]] = [[], []]
    done = [False, False]
    v_inv = jnp.asarray(rm.v_inverse())
    for i in range(n):
      lp = np.asarray(logp)
      top = np.argpartition(-lp, self.top_k, axis=1)[:, : self.top_k]
      cands = np.unique(top)  # [C]: the union of both arms' top-k
      emb = self.embed_candidates(out, cands).reshape(2, len(cands), -1)
      ex1, _ = _scores(rm.params, jnp.asarray(emb[0]), v_inv, jnp.asarray(emb[0, 0]),
                       jnp.asarray(lp[0, cands]), self.w, self.nu)
      c1 = int(cands[int(jnp.argmax(ex1))])
      ref = emb[0, int(np.searchsorted(cands, c1))]
      _, ex2 = _scores(rm.params, jnp.asarray(emb[1]), v_inv, jnp.asarray(ref),
                       jnp.asarray(lp[1, cands]), self.w, self.nu)
      ex2 = np.array(ex2)
      if out[1] == out[0]:  # not yet apart: arm 2 must take another token
        ex2[cands == c1] = -np.inf
      c2 = int(cands[int(np.argmax(ex2))])
      toks = []
      for a, c in enumerate((c1, c2)):
        if not done[a]:
          out[a].append(c)
          done[a] = c in self.eos
        toks.append(c)
      if all(done) or i == n - 1:
        break
      kv[:, p + i] = 1
      logp, cache = _step(self.graphdef, self.state, jnp.asarray(toks, jnp.int32), cache,
                          jnp.asarray(kv), jnp.asarray([p + i, p + i], jnp.int32), p + i)
    text = [self.tokenizer.decode([t for t in o if t not in self.eos]) for o in out]
    return Responses(text[0], text[1], out[0], out[1], time.perf_counter() - t0,
                     len(out[0]) + len(out[1]))
