"""T-POP's two-arm decoding on our frozen Flax LLM, one KV cache for both arms.

Both arms decode the same prompt as the two rows of one batch (prefill once, then one cached
step per token). At each step the candidates are the union of both arms' top-k next tokens;
every (arm, candidate) continuation is embedded by the text encoder and scored by the user's
reward model in one batched call (the LLM's own features through a cache per arm,
features.FeatureCache: one row per candidate, not its whole text). Then
  arm 1 (exploit):  argmax_c  log p(c | x1) + w sigmoid(r(x1 + c))
  arm 2 (explore):  argmax_c  log p(c | x2) + w sigmoid(r(x2 + c)) + nu bonus(x2 + c; x1 + c1)
(`lm_score="prob"`: p in place of log p, as the public code does; then the reward can outweigh
the LLM anywhere in the top-k, not only among candidates within w nats of the best.
`reward_term="relative"`: sigmoid(r(x + c) - r(x + c*)) in place of sigmoid(r(x + c)), c* the
arm's most likely candidate: the Bradley-Terry probability that the user prefers x + c to the
LLM's own choice. The Bradley-Terry fit leaves r's offset free, so sigmoid(r) can sit at 0 or 1
for every candidate of a step and tell none apart; the difference cannot.)
with c1 arm 1's choice and bonus the dueling-bandit term (reward.UserRewardModel.bonus); while
arm 2's text equals arm 1's, c1 is excluded from arm 2's candidates, so the two responses
differ. With w = 0 and nu = 0, arm 1 is greedy decoding. No LLM weight changes.
`min_p` > 0 keeps, for each arm, only the candidates whose probability is at least min_p times
that arm's most likely one (min-p sampling's filter, applied to the steering): the reward then
chooses among tokens the LLM finds plausible, and cannot buy a rule's score with tokens of
near-zero probability ("Unsuspicious Footpolly"). min_p = 1 leaves the most likely token alone:
greedy decoding whatever w. Arm 2 falls back to its best other candidate where the filter
leaves it none apart from arm 1's token.
`budget` > 0 bounds instead what each arm's answer may cost in the LLM's likelihood as a whole:
an arm's shortfall at a step is log p of its own most likely token minus log p of the token it
takes, and a candidate is allowed only while the arm's summed shortfall, this step's included,
stays within budget x (tokens so far + 1). So at every length the answer's mean log p per token
lies within `budget` of the most likely choices along its own path: one costly token (an early
EOS, a number) can be bought with steps that followed the LLM, where min_p would forbid it, and
a string of tokens each just above min_p's floor cannot add up. The most likely token is always
allowed (it costs nothing), so arm 1 never runs out of candidates; arm 2 falls back as above.

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
from tapper_jax.models.tokenizer import bucket_length
from tapper_jax.tpop import reward as reward_lib
from tapper_jax.tpop.features import FeatureCache, LLMTextEncoder


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


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_logprobs(graphdef, state, ids, mask):
  """log p of each token of right-padded rows ids [B,T] given the ones before it: [B,T-1]."""
  model: LlamaForCausalLM = nnx.merge(graphdef, state)
  h, _ = model.hidden_states(ids, attention_mask=mask)
  lp = jax.nn.log_softmax(model.logits(h[:, :-1]).astype(jnp.float32))
  return jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]


REWARD_TERMS = ("absolute", "relative")


def reward_term(params, emb, anchor, *, relative: bool):
  """The reward's part of a candidate's score, before w: sigmoid(r(e)) [C] for embeddings e
  [C,E], or with `relative` sigmoid(r(e) - r(anchor)) (anchor [E])."""
  r = reward_lib.reward(params, emb)
  return jax.nn.sigmoid(r - reward_lib.reward(params, anchor) if relative else r)


@functools.partial(jax.jit, static_argnames=("explore", "relative"))
def _scores(params, emb, v_inv, ref, anchor, logp, w, nu, *, explore: bool, relative: bool):
  """Scores [C] of candidates (embeddings [C,E]) for one arm: the exploit score, plus nu times
  the exploration bonus against `ref` [E] for the explore arm (only that arm computes it). With
  `relative`, the reward term is sigmoid(r(e) - r(anchor)) (anchor [E]: the arm's most likely
  candidate), else sigmoid(r(e))."""
  score = logp + w * reward_term(params, emb, anchor, relative=relative)
  return score + nu * reward_lib.bonus(params, emb, ref, v_inv) if explore else score


def _padded_scores(params, emb, v_inv, ref, anchor, logp, w, nu, *, explore: bool,
                   relative: bool) -> np.ndarray:
  """`_scores` on C candidates padded to a power of two (log-prob -inf): few compiled shapes."""
  c = len(logp)
  size = bucket_length(c, smallest=8)
  emb = np.concatenate([emb, np.zeros((size - c, emb.shape[1]), emb.dtype)])
  logp = np.concatenate([np.asarray(logp, np.float32), np.full((size - c,), -np.inf, np.float32)])
  return np.array(_scores(params, jnp.asarray(emb), v_inv, jnp.asarray(ref), jnp.asarray(anchor),
                          jnp.asarray(logp), w, nu, explore=explore, relative=relative))[:c]


@dataclasses.dataclass
class Responses:
  exploit: str
  explore: str  # "" when decoded without exploration
  exploit_ids: list
  explore_ids: list
  seconds: float
  tokens: int  # tokens generated over the arms decoded


class TwoArmDecoder:
  """Arm 1 needs only the candidates within `w` of its best LLM term (sigmoid lies in (0, 1),
  so no other can win), within `w / 2` with the relative term (the most likely candidate's is
  1/2): exact, and most steps then embed a few texts, not 2k."""

  def __init__(self, llm: LlamaForCausalLM, tokenizer, encoder, *, top_k: int = 40,
               w: float = 1.0, nu: float = 1.0, max_new_tokens: int = 32,
               lm_score: str = "logprob", reward_term: str = "absolute", min_p: float = 0.0,
               budget: float = 0.0, feature_cache: bool = True):
    if not 0.0 <= min_p <= 1.0:
      raise ValueError(f"min_p must lie in [0, 1], got {min_p}")
    if budget < 0:
      raise ValueError(f"budget must be >= 0 nats per token (0: off), got {budget}")
    self.min_p, self.budget = min_p, budget
    if lm_score not in ("logprob", "prob"):
      raise ValueError(f"lm_score must be 'logprob' or 'prob', got {lm_score!r}")
    if reward_term not in REWARD_TERMS:
      raise ValueError(f"reward_term must be one of {REWARD_TERMS}, got {reward_term!r}")
    self.lm_score, self.relative = lm_score, reward_term == "relative"
    self.llm, self.tokenizer, self.encoder = llm, tokenizer, encoder
    self.top_k, self.w, self.nu, self.max_new_tokens = top_k, w, nu, max_new_tokens
    self.graphdef, self.state = nnx.split(llm)
    self.eos = set(llm.config.eos_token_ids)
    # The LLM's own features grow with the text: a cache per arm (features.FeatureCache) embeds
    # a step's candidates as one row each, while the answer fits the encoder's max_tokens.
    self.feature_cache = (isinstance(encoder, LLMTextEncoder) and feature_cache
                          and tokenizer.bos_id is not None
                          and max_new_tokens + 1 <= encoder.max_tokens)

  @classmethod
  def from_config(cls, llm, tokenizer, encoder, cfg, **overrides) -> "TwoArmDecoder":
    """The decoder a run's config (configs/tpop.py, or its dict from tpop.json) asks for;
    `overrides` replace fields (a benchmark's sweep). Fields older runs lack take the values
    those runs had in effect."""
    kw = dict(top_k=cfg["top_k"], w=cfg["w"], nu=cfg["nu"], max_new_tokens=cfg["max_new_tokens"],
              lm_score=cfg.get("lm_score", "logprob"),
              reward_term=cfg.get("reward_term", "absolute"), min_p=cfg.get("min_p", 0.0),
              budget=cfg.get("budget", 0.0))
    return cls(llm, tokenizer, encoder, **{**kw, **overrides})

  def mean_logprob(self, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """Mean log p_LLM per token of an answer after its prompt (teacher-forced; nan if empty):
    how likely the frozen LLM finds what the reward steered it to write."""
    if not answer_ids:
      return float("nan")
    seq = list(prompt_ids) + list(answer_ids)
    ids, mask = self.tokenizer.pad([seq], side="right", length=bucket_length(len(seq), smallest=32))
    lp = np.asarray(_token_logprobs(self.graphdef, self.state, jnp.asarray(ids),
                                    jnp.asarray(mask)))[0]
    p = len(prompt_ids)
    return float(lp[p - 1:p - 1 + len(answer_ids)].mean())

  def embed_candidates(self, prefixes: list[list[int]], candidates: np.ndarray) -> np.ndarray:
    """[A*C, E]: every arm's text extended by every candidate token, embedded in one call."""
    return self._embed([(p, c) for p in prefixes for c in candidates])

  def read(self, texts_ids, texts=None) -> np.ndarray:
    """[N, E]: answers given as token ids, in one encoder call. The LLM's features read the ids
    themselves (a re-tokenized " The" would be "The"); a sentence encoder reads `texts` (the
    text shown) or else the decoded ids."""
    if isinstance(self.encoder, LLMTextEncoder):
      return self.encoder.encode_ids(texts_ids)
    return self.encoder.encode(texts if texts is not None else
                               [self.tokenizer.decode(ids) for ids in texts_ids])

  def _embed(self, pairs) -> np.ndarray:
    """[N, E]: the texts prefix + candidate for (prefix, candidate) pairs, in one encoder call."""
    return self.read([list(p) + [int(c)] for p, c in pairs])

  def _features(self, out, groups, fc: FeatureCache | None) -> list[np.ndarray]:
    """Each (arm, candidates [C]) group's [C, E]: arm's text + each candidate, embedded in one
    call (through the feature cache where there is one: the same values, one row a text)."""
    if fc is not None:
      got = fc.features(dict(groups))
      return [got[a] for a, _ in groups]
    emb = self._embed([(out[a], c) for a, cs in groups for c in cs])
    return np.split(emb, np.cumsum([len(cs) for _, cs in groups])[:-1])

  def _pick(self, rm, v_inv, lp, cands, near, top1, out, explore: bool,
            allowed2=None, fc: FeatureCache | None = None) -> list[int]:
    """Each arm's next token: arm 1 scores the candidates `near` that can still win, arm 2 (with
    `explore`) those the filters leave it plus its exploration bonus, all embedded in one call.
    lp [A,V] LLM terms, cands [C] the union of the arms' top-k, top1 arm 1's most likely,
    allowed2 [C] (bool, None: all) the candidates min_p and the budget leave arm 2."""
    together = explore and out[1] == out[0]  # same text: arm 2 reuses arm 1's embeddings
    # Arm 2 embeds only what it may take (a filtered-out candidate scores -inf whatever its
    # reward) and its most likely candidate, the relative term's anchor.
    top2 = cands[int(lp[1, cands].argmax())] if explore else None
    c2 = cands if allowed2 is None else cands[allowed2 | (cands == top2)]
    first = np.union1d(near, c2) if together else near
    embs = self._features(out, [(0, first)] + ([(1, c2)] if explore and not together else []),
                          fc)
    e1 = embs[0]
    sel = np.isin(first, near)
    at = lambda c: int(np.flatnonzero(first == c)[0])  # noqa: E731  row of e1
    ex1 = _padded_scores(rm.params, e1[sel], v_inv, e1[0], e1[at(top1)], lp[0, first[sel]],
                         self.w, self.nu, explore=False, relative=self.relative)
    c1 = int(first[sel][int(np.argmax(ex1))])
    toks = [c1]
    if explore:
      e2 = e1[np.isin(first, c2)] if together else embs[1]  # rows of c2, in its order
      ref = e1[at(c1)]
      anchor = e2[int(np.flatnonzero(c2 == top2)[0])]
      ex2 = np.full(len(cands), -np.inf)
      ex2[np.isin(cands, c2)] = _padded_scores(rm.params, e2, v_inv, ref, anchor, lp[1, c2],
                                               self.w, self.nu, explore=True,
                                               relative=self.relative)
      if allowed2 is not None:
        ex2 = np.where(allowed2, ex2, -np.inf)
      if together:  # not yet apart: arm 2 must take another token
        ex2[cands == c1] = -np.inf
        if np.isneginf(ex2).all():  # the filters left none: the most likely other token
          ex2 = np.where(cands == c1, -np.inf, lp[1, cands])
      toks.append(int(cands[int(np.argmax(ex2))]))
    return toks

  def generate(self, prompt_ids: list[int], rm: reward_lib.UserRewardModel, *,
               explore: bool = True, trace: list | None = None) -> Responses:
    """Both arms (a preference round), or with `explore=False` arm 1 alone (serving).
    `trace`, if given, receives arm 1's next-token log-probs [V] at every step (for tests)."""
    t0 = time.perf_counter()
    arms = 2 if explore else 1
    n, p = self.max_new_tokens, bucket_length(len(prompt_ids), smallest=32)
    # Left-padded to a bucket: one compiled prefill per prompt bucket.
    ids, mask = self.tokenizer.pad([list(prompt_ids)] * arms, side="left", length=p)
    logp, cache = _prefill(self.graphdef, self.state, jnp.asarray(ids), jnp.asarray(mask),
                           length=p + n)
    kv = np.concatenate([mask, np.zeros((arms, n), np.int32)], axis=1)
    pos = np.full((arms,), len(prompt_ids), np.int32)
    out: list[list[int]] = [[] for _ in range(arms)]
    done = [False] * arms
    v_inv = jnp.asarray(rm.v_inverse())
    spent = np.zeros(arms)  # each arm's summed shortfall against its most likely tokens
    fc = FeatureCache(self.encoder, arms) if self.feature_cache else None
    for i in range(n):
      lp = raw = np.asarray(logp)
      if trace is not None:
        trace.append(lp[0])
      if self.lm_score == "prob":  # the public code's LLM term: p, not log p
        lp = np.exp(lp)
      top = np.argpartition(-lp, self.top_k, axis=1)[:, : self.top_k]
      cands = np.unique(top)  # [C]: the union of the arms' top-k
      top1 = cands[lp[0, cands].argmax()]  # arm 1's most likely candidate (its anchor)
      reach = self.w / 2 if self.relative else self.w
      near = cands[lp[0, cands] >= lp[0, top1] - reach] if self.w > 0 else np.asarray([top1])
      best = raw[:, cands].max(1, keepdims=True)  # [A,1] each arm's most likely token's log p
      plausible = np.ones((arms, len(cands)), bool)  # [A,C] what the filters leave each arm
      if self.min_p > 0:  # p >= min_p * the arm's highest p
        plausible &= raw[:, cands] >= best + np.log(self.min_p)
      if self.budget > 0:  # the arm's mean shortfall stays within budget at every length
        plausible &= spent[:, None] + best - raw[:, cands] <= self.budget * (i + 1) + 1e-6
      allowed2 = None
      if self.min_p > 0 or self.budget > 0:
        near = near[np.isin(near, cands[plausible[0]])]
        allowed2 = plausible[-1]
      if explore or len(near) > 1:
        toks = self._pick(rm, v_inv, lp, cands, near, top1, out, explore, allowed2, fc)
      else:  # serving, and only the most likely candidate can win: nothing to embed or score
        toks = [int(top1)]
      for a, c in enumerate(toks):
        if not done[a]:
          spent[a] += best[a, 0] - raw[a, c]
          out[a].append(c)
          if fc is not None:
            fc.append(a, c)
          done[a] = c in self.eos
      if all(done) or i == n - 1:
        break
      kv[:, p + i] = 1
      logp, cache = _step(self.graphdef, self.state, jnp.asarray(toks, jnp.int32), cache,
                          jnp.asarray(kv), jnp.asarray(pos + i), p + i)
    text = [self.tokenizer.decode([t for t in o if t not in self.eos]) for o in out]
    return Responses(text[0], text[1] if explore else "", out[0], out[1] if explore else [],
                     time.perf_counter() - t0, sum(len(o) for o in out))
