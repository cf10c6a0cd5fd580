"""T-POP: the reward model's sign and the bandit's covariance, the two-arm decoder against
greedy decoding, batched scoring against one-by-one, and the simulated user."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tapper_jax.tpop import reward as rl
from tapper_jax.tpop.user import SimulatedUser, score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tpop_config():
  """configs/tpop.py as a module (configs/ is not a package)."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import tpop
  return tpop

E = 8


def _toy(n, seed=0):
  """Pairs of embeddings and a hidden direction u: the user prefers the higher u . e."""
  rng = np.random.default_rng(seed)
  u = rng.normal(size=E)
  a, b = rng.normal(size=(n, E)).astype(np.float32), rng.normal(size=(n, E)).astype(np.float32)
  return u, a, b


@pytest.mark.parametrize("official_sign", [False, True])
def test_refit_ranks_the_preferred_side_higher_unless_the_sign_is_flipped(official_sign):
  u, a, b = _toy(48)
  m = rl.UserRewardModel(E, hidden=32, lr=1e-2, official_sign=official_sign)
  for x, y in zip(a, b):
    win, lose = (x, y) if x @ u > y @ u else (y, x)
    m.add(win, lose)
  m.refit()
  _, ta, tb = _toy(200, seed=1)  # held-out pairs
  truth = ta @ u > tb @ u
  ranked = np.asarray(rl.reward(m.params, ta) > rl.reward(m.params, tb))
  agree = (ranked == truth).mean()
  if official_sign:
    assert agree < 0.2, agree  # the flipped label learns the opposite preference
  else:
    assert agree > 0.8, agree


def test_refit_objective_is_the_bt_loss_plus_the_pull_to_init_by_hand():
  """reward.objective against numpy: (sum_i w_i softplus(-(r(a_i) - r(b_i))) + reg/2 ||theta -
  theta_0||^2) / sum_i w_i, padding rows (weight 0) ignored."""
  _, a, b = _toy(5)
  p0 = rl.init_params(jax.random.PRNGKey(0), E, 16)
  p = jax.tree.map(lambda x: x + 0.1, p0)
  weights = np.asarray([1, 1, 1, 0, 0], np.float32)
  r = lambda q, e: np.asarray(rl.reward(q, jnp.asarray(e)), np.float64)  # noqa: E731
  margin = r(p, a) - r(p, b)
  drift = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
              for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(p0)))
  for reg in (0.0, 2.5):
    want = (np.sum(weights * np.log1p(np.exp(-margin))) + 0.5 * reg * drift) / 3
    got = rl.objective(p, p0, jnp.asarray(a), jnp.asarray(b), jnp.asarray(weights), reg)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_the_pull_to_init_bounds_the_reward_and_keeps_its_order():
  """Separable preferences: the plain fit drives the reward's spread up; with reg the spread
  stays a fraction of it and the held-out order is still learned."""
  u, a, b = _toy(48)
  spread, agree = {}, {}
  _, ta, tb = _toy(200, seed=1)
  for reg in (0.0, 10.0):
    m = rl.UserRewardModel(E, hidden=32, lr=1e-2, reg=reg)
    for x, y in zip(a, b):
      m.add(*((x, y) if x @ u > y @ u else (y, x)))
    m.refit()
    spread[reg] = float(np.std(np.asarray(rl.reward(m.params, ta))))
    agree[reg] = float(np.mean(np.asarray(rl.reward(m.params, ta) > rl.reward(m.params, tb))
                               == (ta @ u > tb @ u)))
  assert spread[10.0] < 0.5 * spread[0.0], spread  # measured: 1.6 vs 8.5
  assert agree[10.0] > 0.8, agree  # measured: 0.89


@pytest.mark.parametrize("official_covariance", [False, True])
def test_the_bonus_of_a_fixed_candidate_shrinks_as_preferences_arrive(official_covariance):
  _, a, b = _toy(30)
  m = rl.UserRewardModel(E, hidden=32, official_covariance=official_covariance)
  cand, ref = jnp.asarray(a[:1]), jnp.asarray(b[0])
  bonuses = [float(m.bonus(cand, ref)[0])]
  for x, y in zip(a[1:], b[1:]):
    m.add(x, y)
    bonuses.append(float(m.bonus(cand, ref)[0]))
  steps = np.diff(bonuses)
  if official_covariance:
    assert (steps >= 0).all() and bonuses[-1] > 2 * bonuses[0]  # exploration grows with data
  else:
    assert (steps <= 1e-7).all() and bonuses[-1] < 0.5 * bonuses[0]


def test_refit_from_init_is_one_fit_on_every_preference():
  """With `refit_from_init` a refit forgets the previous fit: after refits at 3 and at 6
  preferences the MLP equals one fit on the 6 from the init; a warm refit does not."""
  _, a, b = _toy(6)
  fits = {}
  for from_init in (True, False):
    m = rl.UserRewardModel(E, hidden=16, lr=1e-2, refit_from_init=from_init)
    for i, (x, y) in enumerate(zip(a, b)):
      m.add(x, y)
      if i in (2, 5):
        m.refit()
    fits[from_init] = np.asarray(rl.reward(m.params, a))
  once = rl.UserRewardModel(E, hidden=16, lr=1e-2)
  for x, y in zip(a, b):
    once.add(x, y)
  once.refit()
  np.testing.assert_allclose(fits[True], np.asarray(rl.reward(once.params, a)), rtol=1e-6)
  assert not np.allclose(fits[False], fits[True], rtol=1e-3)


def test_state_round_trips():
  _, a, b = _toy(5)
  m = rl.UserRewardModel(E, hidden=16)
  for x, y in zip(a, b):
    m.add(x, y)
  m.refit()
  m2 = rl.UserRewardModel(E, hidden=16, seed=9)
  m2.load_state(m.state())
  np.testing.assert_array_equal(np.asarray(rl.reward(m2.params, a)),
                                np.asarray(rl.reward(m.params, a)))
  np.testing.assert_array_equal(m2.v_diag, m.v_diag)
  assert len(m2.winners) == 5


def test_simulated_user_rules_and_noise():
  assert SimulatedUser("concise").prefers_first("Short one.", "A much longer answer here.")
  assert SimulatedUser("numbers").prefers_first("In 2024, 3 wins.", "Many wins.")
  assert SimulatedUser("formal").prefers_first("The results are final.", "I'm sure it's great!")
  assert SimulatedUser("casual").prefers_first("I'm sure it's great!", "The results are final.")
  assert score("casual", "Yeah, I'm in!") == -score("formal", "Yeah, I'm in!") == 3
  assert SimulatedUser("positive").prefers_first("A great win.", "A terrible loss.")
  assert SimulatedUser("topic:space").prefers_first("A space mission", "A trip")
  # Sentence case: capitals after the first word, plus one of prior, over the later words + 1.
  assert score("sentence", "Markets rise in New York") == pytest.approx(-(2 + 1) / (4 + 1))
  assert score("sentence", "Markets Rise In New York") == pytest.approx(-1.0)
  assert score("sentence", "") == score("sentence", "Markets") == -1.0
  assert SimulatedUser("sentence").prefers_first("Markets rise today", "Markets Rise Today")
  assert SimulatedUser("question").prefers_first("Will markets rise?", "Markets rise")
  # VADER's compound is x / sqrt(x^2 + 15) of the summed valences (lexicon: good 1.9, bad
  # -2.5); "not" flips and damps a valence (x -0.74); a text without lexicon words scores 0.
  assert score("vader", "A good day") == pytest.approx(1.9 / np.sqrt(1.9**2 + 15), abs=1e-4)
  assert score("vader", "A bad day") == pytest.approx(-2.5 / np.sqrt(2.5**2 + 15), abs=1e-4)
  assert score("vader", "Not a good day") == pytest.approx(
      -0.74 * 1.9 / np.sqrt((0.74 * 1.9)**2 + 15), abs=1e-4)
  assert SimulatedUser("vader").preference("Markets rise on Monday", "Markets on Monday") is None
  assert SimulatedUser("vader").prefers_first("A great win.", "A terrible loss.")
  assert not SimulatedUser("concise").prefers_first("same", "same")  # ties: a must be better
  # A tie states no preference (recording one would teach noise); a stated one has a side.
  assert SimulatedUser("formal", noise=0.5).preference("Two words.", "Other two.") is None
  assert SimulatedUser("concise").preference("Short.", "Much longer than that.") == 1
  assert SimulatedUser("concise").preference("Much longer than that.", "Short.") == -1
  noisy = SimulatedUser("concise", noise=0.3, seed=0)
  flips = np.mean([not noisy.prefers_first("a", "a b c") for _ in range(2000)])
  assert 0.26 < flips < 0.34
  with pytest.raises(ValueError, match="unknown attribute"):
    score("funny", "x")
  # A greedy answer already free of informal marks can only be tied on formality.
  from tapper_jax.tpop.user import ceiling
  refs = ["The results are final.", "I'm sure it's great!", "Markets rise.", "Yeah, ok."]
  assert ceiling("formal", refs) == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)
  assert ceiling("concise", refs) == ceiling("numbers", refs) == 1.0
  # A user who refuses broken text: below greedy's log p by more than the gate, an answer loses
  # whatever the rule said; within it (the boundary included) the rule's verdict stands; an
  # empty answer (nan) loses unless greedy's is empty too.
  from tapper_jax.tpop.user import gated_win
  assert gated_win(1.0, -1.8, -1.25, 0.5) == 0.0
  assert gated_win(0.5, -1.75, -1.25, 0.5) == 0.5 and gated_win(1.0, -1.7, -1.25, 0.5) == 1.0
  assert gated_win(1.0, -0.2, -1.25, 0.5) == 1.0  # more fluent than greedy: kept
  assert gated_win(1.0, float("nan"), -1.25, 0.5) == 0.0
  assert gated_win(0.5, float("nan"), float("nan"), 0.5) == 0.5
  # In a round, a refused answer loses to one that is not, whatever the rule says (noise still
  # flips); both or neither refused: the rule decides.
  long, short = "A much longer answer here.", "Short."
  assert SimulatedUser("concise").preference(short, long, (True, False)) == -1
  assert SimulatedUser("concise").preference(long, short, (False, True)) == 1
  assert SimulatedUser("concise").preference(short, long, (True, True)) == 1
  assert SimulatedUser("concise").preference("same", "same", (False, True)) == 1
  noisy = SimulatedUser("concise", noise=0.3, seed=1)
  flips = np.mean([noisy.preference(short, long, (True, False)) == 1 for _ in range(2000)])
  assert 0.26 < flips < 0.34


@pytest.fixture(scope="module")
def decoder_parts(model_cache):
  from tapper_jax import models
  from tapper_jax.models import registry
  from tapper_jax.models.bert import SentenceEncoder
  llm, tok = models.load("tiny-random")
  enc = SentenceEncoder.from_pretrained(registry.encoder_folder("all-minilm-l6-v2"), batch_size=32)
  return llm, tok, enc


def test_w0_nu0_exploit_arm_is_greedy_and_the_arms_differ(decoder_parts):
  from tapper_jax.models import greedy_generate
  from tapper_jax.tpop.decode import TwoArmDecoder
  llm, tok, enc = decoder_parts
  rm = rl.UserRewardModel(enc.dim, hidden=64)
  dec = TwoArmDecoder(llm, tok, enc, top_k=5, w=0.0, nu=0.0, max_new_tokens=6)
  for prompt in ("Write a headline for: a storm hits the coast", "Describe the movie Alien"):
    ids = tok.encode(prompt)
    r = dec.generate(ids, rm)
    want = np.asarray(greedy_generate(llm, np.asarray([ids]), np.ones((1, len(ids)), np.int32),
                                      max_new_tokens=6, eos_ids=(-1,), pad_id=0))[0].tolist()
    assert r.exploit_ids == want[: len(r.exploit_ids)] and len(r.exploit_ids) == 6
    assert r.explore_ids != r.exploit_ids
  # With a reward, arm 2 still differs (nu > 0 and w > 0 exercise the other paths).
  rm.add(np.ones(enc.dim, np.float32), np.zeros(enc.dim, np.float32))
  rm.refit()
  r = TwoArmDecoder(llm, tok, enc, top_k=5, w=2.0, nu=1.0, max_new_tokens=4).generate(ids, rm)
  assert r.explore_ids != r.exploit_ids


def _sharp_random_reward(dim: int):
  """A reward fit on 4 random preferences, its scale x1000: sigmoid(r) near 0 or 1, so the
  reward term moves candidates wherever the decoder lets it."""
  rm = rl.UserRewardModel(dim, hidden=64, seed=3)
  rng = np.random.default_rng(0)
  for _ in range(4):
    rm.add(rng.normal(size=dim).astype(np.float32), rng.normal(size=dim).astype(np.float32))
  rm.refit()
  rm.params = {**rm.params, "w2": rm.params["w2"] * 1000}
  return rm


@pytest.mark.parametrize("lm_score,reward_term", [("logprob", "absolute"), ("prob", "absolute"),
                                                 ("logprob", "relative"), ("prob", "relative")])
def test_exploit_arm_equals_a_brute_force_reference(decoder_parts, lm_score, reward_term):
  """Arm 1 against a plain reference: at every step the full forward over prompt + text so far
  (no cache, no padding), the top-k, every candidate embedded and scored, the argmax. Catches a
  wrong cache slot or position, the left padding, a wrong anchor of the relative term, and a
  pruning that is not exact."""
  llm, tok, enc = decoder_parts
  _exploit_against_reference(llm, tok, enc, lm_score, reward_term)


def test_exploit_arm_reading_the_llm_s_own_features_equals_the_reference(decoder_parts):
  """The same reference with config.encoder = "llm:mean": the decoder embeds its candidates
  through the LLM text encoder exactly as the reference does one text at a time."""
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import LLMTextEncoder, load_encoder
  llm, tok, _ = decoder_parts
  enc = load_encoder("llm:mean", llm, tok)
  assert isinstance(enc, LLMTextEncoder) and enc.dim == llm.config.hidden_size
  with pytest.raises(ValueError, match="pool"):
    load_encoder("llm:max", llm, tok)
  # The relative term gives a candidate at most w/2 over the LLM's top-1 (~0.4 ahead here).
  steered = _exploit_against_reference(llm, tok, enc, "logprob", "relative", w=1.5)
  greedy = TwoArmDecoder(llm, tok, enc, top_k=12, w=0.0, nu=0.0, max_new_tokens=5).generate(
      tok.encode("Write a headline for: rain over the hills"), _sharp_random_reward(enc.dim),
      explore=False).exploit_ids
  assert steered != greedy  # the LLM's features moved a choice: the reward was read


def _exploit_against_reference(llm, tok, enc, lm_score, reward_term, w=0.6):
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import LLMTextEncoder
  rm = _sharp_random_reward(enc.dim)
  k = 12  # at w=0.6 top-1 leads by ~0.4: others win only where pruning keeps them
  if lm_score == "prob":  # p ~ 5e-5 here: a w of that size keeps the LLM in the decision
    w = 2e-5
  dec = TwoArmDecoder(llm, tok, enc, top_k=k, w=w, nu=0.5, max_new_tokens=5, lm_score=lm_score,
                      reward_term=reward_term)
  ids = tok.encode("Write a headline for: rain over the hills")
  out, want_lp = [], []
  for _ in range(5):
    logits = llm(jnp.asarray([ids + out]))[0][0, -1]
    lp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
    want_lp.append(lp)
    cands = np.sort(np.argsort(-lp)[:k])
    if isinstance(enc, LLMTextEncoder):  # the LLM reads its own ids (encode_ids' test)
      emb = enc.encode_ids([out + [int(c)] for c in cands])
    else:
      emb = enc.encode([tok.decode(out + [int(c)]) for c in cands])
    lm = np.exp(lp[cands]) if lm_score == "prob" else lp[cands]
    r = np.asarray(rl.reward(rm.params, jnp.asarray(emb)), np.float64)
    if reward_term == "relative":  # against the LLM's most likely candidate's reward
      r = r - r[int(np.argmax(lp[cands]))]
    score = lm + w * (1 / (1 + np.exp(-r)))
    out.append(int(cands[int(np.argmax(score))]))
  trace = []
  alone = dec.generate(ids, rm, explore=False, trace=trace)
  assert alone.exploit_ids == out and alone.explore_ids == []
  np.testing.assert_allclose(np.stack(trace), np.stack(want_lp), atol=1e-4)  # cache, positions
  # The fluency measure: the LLM's mean log p of the steered answer, from the same forwards.
  assert dec.mean_logprob(ids, out) == pytest.approx(
      np.mean([lp[t] for lp, t in zip(want_lp, out)]), abs=1e-4)
  # Arm 1 does not depend on arm 2: the same response in a preference round.
  assert dec.generate(ids, rm).exploit_ids == out
  return out


def test_min_p_steers_only_among_plausible_tokens_against_a_brute_force_reference(decoder_parts):
  """min_p: arm 1 against full forwards, the top-k cut to p >= min_p * max p, every survivor
  embedded and scored. At a w where the reward outweighs the LLM anywhere in the top-k, the
  filter must change the answer (it binds), min_p = 1 must give greedy decoding, and arm 2 must
  still differ from arm 1."""
  from tapper_jax.tpop.decode import TwoArmDecoder
  llm, tok, enc = decoder_parts
  rm = _sharp_random_reward(enc.dim)
  # The tiny random LLM's top-12 lie within ~0.4 nats: min_p = 0.85 (-0.16 nats) cuts into them.
  k, w, n = 12, 8.0, 5
  ids = tok.encode("Write a headline for: rain over the hills")

  def reference(min_p):
    out = []
    for _ in range(n):
      lp = np.asarray(jax.nn.log_softmax(llm(jnp.asarray([ids + out]))[0][0, -1].astype(
          jnp.float32)))
      cands = np.sort(np.argsort(-lp)[:k])
      cands = cands[lp[cands] >= lp[cands].max() + np.log(min_p)] if min_p else cands
      emb = enc.encode([tok.decode(out + [int(c)]) for c in cands])
      r = np.asarray(rl.reward(rm.params, jnp.asarray(emb)), np.float64)
      out.append(int(cands[int(np.argmax(lp[cands] + w / (1 + np.exp(-r))))]))
    return out

  def decode(min_p, explore=False):
    return TwoArmDecoder(llm, tok, enc, top_k=k, w=w, nu=0.5, max_new_tokens=n,
                         min_p=min_p).generate(ids, rm, explore=explore)

  free, filtered = decode(0.0).exploit_ids, decode(0.85).exploit_ids
  assert filtered == reference(0.85) and free == reference(0.0)
  assert filtered != free  # the filter binds at this w
  greedy = TwoArmDecoder(llm, tok, enc, top_k=k, w=0.0, nu=0.0, max_new_tokens=n).generate(
      ids, rm, explore=False).exploit_ids
  assert decode(1.0).exploit_ids == greedy
  both = decode(1.0, explore=True)  # nothing left but arm 1's token: arm 2 falls back
  assert both.exploit_ids == greedy and both.explore_ids != both.exploit_ids
  with pytest.raises(ValueError, match="min_p"):
    decode(1.5)
  # A run's config reaches the decoder whole (run.py and the benchmarks build it this way).
  cfg = {"top_k": k, "w": w, "nu": 0.5, "max_new_tokens": n, "lm_score": "logprob",
         "reward_term": "absolute", "min_p": 0.85}
  assert TwoArmDecoder.from_config(llm, tok, enc, cfg).generate(
      ids, rm, explore=False).exploit_ids == filtered
  assert TwoArmDecoder.from_config(llm, tok, enc, cfg, min_p=0.0).min_p == 0.0


def test_budget_bounds_the_answers_mean_shortfall_against_a_brute_force_reference(decoder_parts):
  """budget: arm 1 against full forwards, where a top-k candidate is allowed only while the
  summed shortfall (log p of the step's most likely token minus that of the token taken), this
  step's included, stays within budget x tokens so far. The filter must bind at a w where the
  reward outweighs the LLM, the answer's mean shortfall must stay within the budget at every
  length (from the decoder's own trace), a budget too small for any shortfall gives greedy, and
  arm 2 must still differ from arm 1."""
  from tapper_jax.tpop.decode import TwoArmDecoder
  llm, tok, enc = decoder_parts
  rm = _sharp_random_reward(enc.dim)
  k, w, n = 12, 8.0, 8
  ids = tok.encode("Write a headline for: rain over the hills")

  def reference(budget):
    out, spent = [], 0.0
    for i in range(n):
      lp = np.asarray(jax.nn.log_softmax(llm(jnp.asarray([ids + out]))[0][0, -1].astype(
          jnp.float32)), np.float64)
      cands = np.sort(np.argsort(-lp)[:k])
      if budget:
        cands = cands[spent + lp.max() - lp[cands] <= budget * (i + 1) + 1e-6]
      emb = enc.encode([tok.decode(out + [int(c)]) for c in cands])
      r = np.asarray(rl.reward(rm.params, jnp.asarray(emb)), np.float64)
      out.append(int(cands[int(np.argmax(lp[cands] + w / (1 + np.exp(-r))))]))
      spent += lp.max() - lp[out[-1]]
    return out

  def decode(budget, explore=False, trace=None):
    return TwoArmDecoder(llm, tok, enc, top_k=k, w=w, nu=0.5, max_new_tokens=n,
                         budget=budget).generate(ids, rm, explore=explore, trace=trace)

  # The tiny random LLM's top-12 lie within ~0.4 nats: 0.05 nats a token binds.
  trace = []
  free, bound = decode(0.0).exploit_ids, decode(0.05, trace=trace).exploit_ids
  assert bound == reference(0.05) and free == reference(0.0)
  assert bound != free
  shortfall = np.cumsum([lp.max() - lp[t] for lp, t in zip(trace, bound)])
  assert np.all(shortfall <= 0.05 * np.arange(1, len(bound) + 1) + 1e-5)
  # Not greedy either: one step cost more than 0.05 (min_p = e^-0.05 would forbid it), bought
  # with the steps before it that took the most likely token.
  assert np.diff(shortfall, prepend=0.0).max() > 0.05
  greedy = TwoArmDecoder(llm, tok, enc, top_k=k, w=0.0, nu=0.0, max_new_tokens=n).generate(
      ids, rm, explore=False).exploit_ids
  assert decode(1e-9).exploit_ids == greedy
  both = decode(1e-9, explore=True)  # nothing left but arm 1's token: arm 2 falls back
  assert both.exploit_ids == greedy and both.explore_ids != both.exploit_ids
  with pytest.raises(ValueError, match="budget"):
    decode(-1.0)
  cfg = {"top_k": k, "w": w, "nu": 0.5, "max_new_tokens": n, "lm_score": "logprob",
         "reward_term": "absolute", "budget": 0.05}
  assert TwoArmDecoder.from_config(llm, tok, enc, cfg).generate(
      ids, rm, explore=False).exploit_ids == bound


def test_oracle_reward_fit_on_rule_ordered_headlines_orders_unseen_ones_as_the_rule(
    decoder_parts, tmp_path):
  """The oracle of tpop_w --regs=oracle: pairs ordered by the rule (preferred first, no ties),
  headlines read from profiles leaving out the asked articles, and a reward fit on them that
  orders unseen headlines as the rule does (an inverted pair order would order them the other
  way round)."""
  from tapper_jax.tpop.oracle import fit_oracle, headlines
  from tapper_jax.tpop.run import agreement
  from tapper_jax.tpop.user import rule_pairs, score
  _, _, enc = decoder_parts
  rng = np.random.default_rng(0)
  vocab = ("storm rain city mayor school team wins loses vote court fire market new old big "
           "small river road plan law star film music game").split()
  texts = sorted({" ".join(rng.choice(vocab, int(rng.integers(1, 13)))) for _ in range(300)})
  pairs = rule_pairs("concise", texts[:200], 400, seed=1)
  assert len(pairs) == 400
  assert all(score("concise", a) > score("concise", b) for a, b in pairs)
  assert rule_pairs("concise", ["same length", "equal words"], 5) == []  # ties: no pair
  cfg = {"hidden": 64, "lam": 1.0, "lr": 1e-3, "reg": 0.0, "seed": 0}
  rm = fit_oracle(cfg, "concise", texts[:200], enc.encode(texts[:200]), 400)
  assert len(rm.winners) == 400
  agree, n = agreement(rm, "concise", texts[200:], enc.encode(texts[200:]))
  assert n > 1000 and agree > 0.8, agree
  with pytest.raises(ValueError, match="ties every pair"):
    fit_oracle(cfg, "concise", ["same length", "equal words"],
               enc.encode(["same length", "equal words"]), 5)
  # Headlines from profiles: titles and a word-prefix of each, never an asked article's.
  rows = [{"input": "x", "profile": [
      {"title": "Storm Hits The Coast Tonight", "text": "A storm hit the coast."},
      {"title": "Asked Article Headline Here", "text": "The asked article body."},
      {"title": "", "text": "No title."}]}]
  (tmp_path / "train_questions.json").write_text(json.dumps(rows))
  got = headlines(str(tmp_path), "train", ["Write: The asked article body."], seed=0)
  assert "Storm Hits The Coast Tonight" in got and len(got) == 2
  assert not any("Asked" in t for t in got)
  prefix = [t for t in got if t != "Storm Hits The Coast Tonight"][0]
  assert "Storm Hits The Coast Tonight".startswith(prefix) and 1 <= len(prefix.split()) < 5


def test_reach_counts_the_steps_a_top_k_token_raises_the_rule_against_full_forwards(
    decoder_parts):
  """tpop.reach.reach (benchmarks/tpop_reach.py) against a plain reference: the greedy path by
  full forwards (no cache), each step's top-k, each candidate's text scored by the rule. k = 1
  (the greedy token alone) never raises; a topic word that is the runner-up at step 0 raises
  there."""
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.reach import reach
  llm, tok, enc = decoder_parts
  ids = tok.encode("Write a headline for: rain over the hills")
  lp0 = np.asarray(llm(jnp.asarray([ids]))[0][0, -1], np.float32)
  runner_up = tok.decode([int(np.argsort(-lp0, kind="stable")[1])]).strip().lower()
  attributes = ["concise", "numbers", f"topic:{runner_up}"]
  ks = [1, 3, 12]
  dec = TwoArmDecoder(llm, tok, enc, top_k=12, w=0.0, nu=0.0, max_new_tokens=6)
  got, n = reach(dec, ids, attributes, ks)
  want, out = {(a, k): 0 for a in attributes for k in ks}, []
  for _ in range(6):
    lp = np.asarray(llm(jnp.asarray([ids + out]))[0][0, -1], np.float32)
    order = np.argsort(-lp, kind="stable")
    text = lambda c: tok.decode(out + [int(c)])  # noqa: E731
    for a in attributes:
      for k in ks:
        want[(a, k)] += any(score(a, text(c)) > score(a, text(order[0])) for c in order[:k])
    out.append(int(order[0]))
  assert n == 6 and got == want
  assert all(got[(a, 1)] == 0 for a in attributes)
  if runner_up and runner_up not in tok.decode([int(np.argmax(lp0))]).lower():
    assert got[(f"topic:{runner_up}", 3)] >= 1


def test_batched_candidate_scoring_equals_one_by_one(decoder_parts):
  from tapper_jax.tpop.decode import TwoArmDecoder, _scores
  llm, tok, enc = decoder_parts
  rm = rl.UserRewardModel(enc.dim, hidden=64)
  dec = TwoArmDecoder(llm, tok, enc, top_k=5)
  prefixes = [tok.encode("The storm"), tok.encode("A quiet day")]
  cands = np.asarray([11, 500, 2048, 7777])
  batched = dec.embed_candidates(prefixes, cands)
  single = np.concatenate([dec.embed_candidates([p], np.asarray([c])) for p in prefixes
                           for c in cands])
  np.testing.assert_allclose(batched, single, atol=1e-5)
  lp = jnp.asarray(np.random.default_rng(0).normal(size=4), jnp.float32)
  v = jnp.asarray(rm.v_inverse())
  ref = jnp.asarray(batched[4])
  anchor = jnp.asarray(batched[5])
  r = rl.reward(rm.params, jnp.asarray(batched[:4]))
  d = rl.features(rm.params, jnp.asarray(batched[:4])) - rl.features(rm.params, ref)[None]
  for relative in (False, True):
    ex, ep = (_scores(rm.params, jnp.asarray(batched[:4]), v, ref, anchor, lp, 1.0, 0.5,
                      explore=x, relative=relative) for x in (False, True))
    for i in range(4):
      e1, p1 = (_scores(rm.params, jnp.asarray(batched[i:i + 1]), v, ref, anchor, lp[i:i + 1],
                        1.0, 0.5, explore=x, relative=relative) for x in (False, True))
      np.testing.assert_allclose([ex[i], ep[i]], [e1[0], p1[0]], rtol=1e-5, atol=1e-6)
    # By hand: exploit = log p + w sigmoid(r) (relative: r minus the anchor's r); explore adds
    # nu sqrt(d^T V^-1 d).
    shift = rl.reward(rm.params, anchor) if relative else 0.0
    np.testing.assert_allclose(ex, lp + jax.nn.sigmoid(r - shift), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ep - ex, 0.5 * jnp.sqrt(jnp.sum(d * d * v, -1)), rtol=1e-4,
                               atol=1e-6)


def _full_forward_mean_logprob(llm, prompt: list[int], answer: list[int]) -> float:
  """The reference for decode.mean_logprob: one full forward of prompt + answer, no cache and no
  padding, and the mean log p of each answer token given the ones before it."""
  lp = jax.nn.log_softmax(llm(jnp.asarray([prompt + answer]))[0][0].astype(jnp.float32))
  return float(np.mean([lp[len(prompt) - 1 + i, t] for i, t in enumerate(answer)]))


def _questions_folder(tmp_path):
  """A LaMP-2N-style test_questions.json of 8 short articles (the tiny runs' queries)."""
  folder = tmp_path / "data"
  folder.mkdir()
  rows = [{"id": str(i), "input": f"Which category? categories: [a, b] article: News item {i} "
           f"about topic {i % 3}.", "profile": [  # headlines for tpop_w --regs=oracle
               {"title": " ".join(["Big news"] * (1 + i % 4) + [f"on topic {i % 3}"]),
                "text": f"Profile article {i}."}]} for i in range(8)]
  (folder / "test_questions.json").write_text(json.dumps(rows))
  return folder


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_tpop_run_tiny_end_to_end(tmp_path, model_cache):
  """The CLI's run on the tiny variant: held-out queries never in the stream, a win-rate curve
  per attribute, latency against greedy, and each user's state restorable to continue."""
  tpop_config = _tpop_config()
  from tapper_jax.tpop import run as tpop_run
  from tapper_jax.tpop.reward import UserRewardModel
  folder = _questions_folder(tmp_path)
  c = tpop_config.get_config("tiny")
  c.data_folder = str(folder)
  train, held = tpop_run.queries(str(folder), "test", 4, 2)
  assert not set(train) & set(held) and len(held) == 2
  out = tpop_run.run(c, str(tmp_path / "wd"))
  assert set(out["win_rate"]) == {"concise", "numbers"}
  assert all(set(v) == {0, 2, 4} and all(0 <= x <= 1 for x in v.values())
             for v in out["win_rate"].values())
  assert set(out["ceiling"]) == {"concise", "numbers"}
  held_answers = [h["greedy"] for h in out["held_out"]]
  assert [h["query"] for h in out["held_out"]] == held and len(held_answers) == 2
  shown = out["exploit_responses"]["concise"][4]
  from tapper_jax.tpop.user import SimulatedUser
  assert out["win_rate"]["concise"][4] == pytest.approx(  # the curve scores what was shown
      np.mean([SimulatedUser("concise").wins(a, b) for a, b in zip(shown, held_answers)]))
  assert set(out["latency_ratio"]) == {"tpop_exploit", "tpop_two_arm"}
  # Fluency: the greedy answers' mean log p per token, against full forwards of prompt + answer.
  from tapper_jax import models
  llm, tok = models.load(c.model)
  want, stops, lengths = [], [], []
  for q in held:
    prompt = tpop_run.chat_ids(tok, q)
    ans = tpop_run.greedy_answer(llm, tok, q, max_new_tokens=c.max_new_tokens)[1]
    stops.append(ans[-1] in llm.config.eos_token_ids)
    lengths.append(len(ans) - stops[-1])
    want.append(_full_forward_mean_logprob(llm, prompt, ans))
  assert out["mean_logprob"]["greedy"] == pytest.approx(np.mean(want), abs=1e-4)
  assert out["logprobs"]["greedy"] == pytest.approx(want, abs=1e-4)
  # The gated curve, by hand from each shown answer's verdict and log p against greedy's.
  for a in ("concise", "numbers"):
    assert set(out["gated_win_rate"][a]) == {0, 2, 4}
    for point, shown_at in out["exploit_responses"][a].items():
      lps = out["logprobs"]["exploit"][a][point]
      assert np.nanmean(lps) == pytest.approx(out["mean_logprob"]["exploit"][a][point])
      verdicts = [SimulatedUser(a).wins(x, b) for x, b in zip(shown_at, held_answers)]
      gated = [0.0 if not lp >= g - c.gate else v
               for v, lp, g in zip(verdicts, lps, out["logprobs"]["greedy"])]
      assert out["gated_win_rate"][a][point] == pytest.approx(np.mean(gated))
  assert set(out["mean_logprob"]["exploit"]["concise"]) == {0, 2, 4}
  # How the answers end: counted here from the greedy ids (an answer shorter than the cap must
  # have stopped by EOS), and words per token with the rules' own word count.
  from tapper_jax.tpop.user import words
  shape = out["answer_shape"]["greedy"]
  assert shape["stopped"] == np.mean(stops) and shape["tokens"] == np.mean(lengths)
  assert all(n == c.max_new_tokens for n, s in zip(lengths, stops) if not s)
  assert shape["words_per_token"] == pytest.approx(
      sum(len(words(a)) for a in held_answers) / sum(lengths))
  assert set(out["answer_shape"]["exploit"]["concise"]) == {0, 2, 4}
  assert all(v > 0 for v in out["latency_ratio"].values())
  for f in ("tpop.json", "tpop.md", "tpop.png"):
    assert (tmp_path / "wd" / f).is_file()
  rm = UserRewardModel(384, hidden=32)
  tpop_run.load_user(str(tmp_path / "wd"), "sim-concise", rm)
  stated = out["preferences_stated"]["concise"]
  assert stated[0] == 0 and stated[2] <= stated[4] <= 4  # ties state none
  assert len(rm.winners) == stated[4]  # its preferences: the user continues from here
  lo, hi = out["interval"]["concise"][4]
  assert lo <= out["win_rate"]["concise"][4] <= hi
  assert tpop_run.interval([1.0] * 5) == [1.0, 1.0]
  # The serving-weight benchmark on this run's held-out queries: w = 0 is greedy decoding (every
  # answer ties), and w = the run's w reproduces the run's last figure with its saved models, as
  # does the run's preferences replayed through refits with the run's reg (1).
  p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "tpop_w.py"),
                      f"--run={tmp_path / 'wd'}", "--held_out", f"--ws=0,{c.w:g}",
                      "--regs=saved,1,5,negated,oracle", "--lm_scores=prob,logprob",
                      f"--min_ps={c.min_p:g},1",
                      "--budgets=0,1e-9", "--oracle_split=test", "--oracle_pairs=12"],
                     capture_output=True, text=True, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  bench = json.loads((tmp_path / "wd" / "tpop_w_test.json").read_text())
  for a in ("concise", "numbers"):
    run_w = str(float(c.w))
    for key in (a, f"{a} reg={c.reg:g}"):
      assert bench["rows"][key][c.reward_term]["0.0"]["win_rate"] == 0.5
      assert bench["rows"][key][c.reward_term][run_w]["win_rate"] == pytest.approx(
          out["win_rate"][a][4])
    for setting in (c.reward_term, f"{c.reward_term} logprob"):  # w = 0: greedy, its answers and fluency
      assert bench["rows"][a][setting]["0.0"]["win_rate"] == 0.5
      assert bench["rows"][a][setting]["0.0"]["logprob"] == pytest.approx(
          out["mean_logprob"]["greedy"], abs=1e-5)
    # The negated control orders every pair the other way round.
    ours, neg = bench["rows"][a], bench["rows"][f"{a} negated"]
    assert neg["pairs"] == ours["pairs"] and neg["reward_std"] == pytest.approx(ours["reward_std"])
    if ours["pairs"]:  # no reward ties on distinct embeddings
      assert neg["agreement"] == pytest.approx(1 - ours["agreement"])
    # The oracle: a reward fit on the rule-ordered profile headlines, served like the others.
    assert bench["rows"][f"{a} oracle"]["preferences"] == 12
    assert bench["rows"][f"{a} oracle"][c.reward_term]["0.0"]["win_rate"] == 0.5
    # min_p = 1 leaves the LLM's most likely token alone: greedy's answers whatever w.
    assert bench["rows"][a][f"{c.reward_term} min_p=1"][run_w]["win_rate"] == 0.5
    assert bench["rows"][a][f"{c.reward_term} min_p=1"][run_w]["shape"] == bench["greedy_shape"]
    # So does a budget too small for any shortfall.
    assert bench["rows"][a][f"{c.reward_term} budget=1e-09"][run_w]["win_rate"] == 0.5
    assert bench["rows"][a][f"{c.reward_term} budget=1e-09"][run_w]["shape"] == bench[
        "greedy_shape"]
    assert bench["rows"][f"{a} reg={c.reg:g}"]["reward_std"] == pytest.approx(
        bench["rows"][a]["reward_std"], rel=1e-5)
  # A longer cap than the run's: greedy and exploit answers of up to that many tokens; and the
  # gated win rate, by hand: an answer more than `gate` nats per token below greedy's on the
  # same query loses, any other keeps the rule's verdict. A random LLM's answers are all about
  # as unlikely, so the gate here is negative (answers must be more likely than greedy's), for
  # it to bind: greedy's own answers then lose.
  p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "tpop_w.py"),
                      f"--run={tmp_path / 'wd'}", "--held_out", "--ws=0,8", "--max_new_tokens=6",
                      "--gate=-0.1", f"--output={tmp_path}"], capture_output=True, text=True,
                     cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  longer = json.loads((tmp_path / "tpop_w_test.json").read_text())
  assert longer["max_new_tokens"] == 6 and c.max_new_tokens < 6
  g_lp = longer["greedy_logprobs"]
  ids6 = [tpop_run.greedy_answer(llm, tok, q, max_new_tokens=6)[1] for q in held]
  assert longer["greedy_shape"]["tokens"] == np.mean(
      [len(i) - (i[-1] in llm.config.eos_token_ids) for i in ids6])
  binds = []
  for a in ("concise", "numbers"):
    cell = longer["rows"][a][c.reward_term]
    assert cell["0.0"]["win_rate"] == 0.5 and cell["0.0"]["gated_win_rate"] == 0.0
    for x in cell.values():
      want = [0.0 if lp < g + 0.1 else win for win, lp, g in zip(x["wins"], x["logprobs"], g_lp)]
      assert x["gated_win_rate"] == pytest.approx(np.mean(want))
      binds.append(want != x["wins"])
      assert x["shape"]["tokens"] <= 6
  assert any(binds)  # the gate refused some answer the rule let win or tie
  # The candidates benchmark re-reads the exploit decoding step by step (it asserts at every
  # step that no rule-raising candidate's reward gap beats its LLM gap, as the argmax implies).
  p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "tpop_candidates.py"),
                      f"--run={tmp_path / 'wd'}", "--attributes=concise"],
                     capture_output=True, text=True, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  cand = json.loads((tmp_path / "wd" / "tpop_candidates.json").read_text())["rows"]["concise"]
  assert cand["steps"] > 0 and 0 <= cand["steps_with_raising"] <= cand["steps"]
  # The latency benchmark: per-token times of the same decodings, their ratios, and the
  # encoder's rows (a sentence encoder's padded to multiples of 8; the LLM feature cache's one
  # per candidate), at most one call per exploit token.
  p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "tpop_latency.py"),
                      f"--run={tmp_path / 'wd'}", "--held_out", "--min_p=0.3", "--w=2",
                      "--budget=5"],
                     capture_output=True, text=True, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  lat = json.loads((tmp_path / "wd" / "tpop_latency_test.json").read_text())
  # Serving settings other than the run's (a budget that leaves the encoder work here).
  assert lat["min_p"] == 0.3 and lat["w"] == 2.0 and lat["budget"] == 5.0
  lat = lat["rows"]
  assert set(lat) == {"concise", "numbers"}
  for r in lat.values():
    ms, x = r["ms_per_token"], r["exploit_encoder"]
    assert r["ratio"]["exploit"] == pytest.approx(ms["exploit"] / ms["greedy"])
    lo, hi = r["exploit_ratio_interval"]
    assert lo <= r["ratio"]["exploit"] <= hi
    assert 0 < x["forward_share"] <= x["share"] < 1 and 0 < x["calls_per_token"] <= 1
    assert x["rows"] >= x["calls"] and x["padded_tokens"] >= x["rows"]
    if c.encoder != "llm:mean":
      assert x["rows"] % 8 == 0 and x["padded_tokens"] % 64 == 0
  # Counting preferences: each point reached is after exactly that many stated preferences, the
  # rounds it took are recorded, and a point is missing only where the stream ran out.
  c.count, c.attributes, c.eval_after = "preferences", ("concise",), (0, 1, 2)
  out = tpop_run.run(c, str(tmp_path / "wd_prefs"))
  assert out["count"] == "preferences"
  reached = out["win_rate"]["concise"]
  assert 0 in reached and out["rounds"]["concise"][0] == 0
  assert all(out["preferences_stated"]["concise"][p] == p for p in reached)
  rounds = [out["rounds"]["concise"][p] for p in sorted(reached)]
  assert rounds == sorted(rounds) and all(r <= 4 for r in rounds)
  rm = UserRewardModel(384, hidden=32)
  tpop_run.load_user(str(tmp_path / "wd_prefs"), "sim-concise", rm)
  if len(reached) < 3:  # stopped early: only because the 4 stream queries ran out
    assert len(rm.winners) == max(reached) < 2
  else:
    assert len(rm.winners) == 2
  c.count = "batches"
  with pytest.raises(ValueError, match="config.count"):
    tpop_run.run(c, str(tmp_path / "wd_bad"))
  bad = folder / "bad"
  bad.mkdir()
  (bad / "test_questions.json").write_text(json.dumps([{"id": "x", "input": "no article"}]))
  with pytest.raises(ValueError, match="record 0.*field 'input'"):
    tpop_run.queries(str(bad), "test", 1, 1)


@pytest.mark.slow  # a training run: the default suite keeps a margin under 15 minutes
def test_tpop_run_stopped_and_continued_equals_one_run(tmp_path, model_cache):
  """A run stopped after some rounds (in the first attribute, then in the second) and continued
  reaches what one uninterrupted run does: the same curves, answers and preferences, with a
  noisy user (its random state is part of the progress). A finished run continued plays
  nothing, unless later evaluation points are asked; another config is refused."""
  tpop_config = _tpop_config()
  from tapper_jax.tpop import run as tpop_run
  from tapper_jax.tpop.reward import UserRewardModel
  folder = _questions_folder(tmp_path)
  c = tpop_config.get_config("tiny")
  c.data_folder, c.noise = str(folder), 0.5
  one = tpop_run.run(c, str(tmp_path / "one"))
  wd = str(tmp_path / "parts")
  assert tpop_run.run(c, wd, stop_after_rounds=2) is None  # inside the first attribute
  assert not os.path.exists(os.path.join(wd, "tpop.json"))
  assert tpop_run.run(c, wd, stop_after_rounds=1) is None
  assert tpop_run.run(c, wd, stop_after_rounds=2) is None  # across into the second
  progress = sorted(os.listdir(os.path.join(wd, "progress")))
  assert sum(p.startswith("concise-") for p in progress) == 2  # the two latest kept
  assert any(p.startswith("numbers-") for p in progress)
  parts = tpop_run.run(c, wd)
  for key in ("win_rate", "interval", "preferences_stated", "rounds", "exploit_responses"):
    assert parts[key] == one[key], key
  for a in c.attributes:
    ra, rb = UserRewardModel(384, hidden=32), UserRewardModel(384, hidden=32)
    tpop_run.load_user(str(tmp_path / "one"), f"sim-{a}", ra)
    tpop_run.load_user(wd, f"sim-{a}", rb)
    np.testing.assert_array_equal(ra.state()["winners"], rb.state()["winners"])
    for k in ra.params:
      np.testing.assert_array_equal(np.asarray(ra.params[k]), np.asarray(rb.params[k]))
  again = tpop_run.run(c, wd, stop_after_rounds=1)  # finished: nothing to play, no stop
  assert again is not None and again["win_rate"] == one["win_rate"]
  # A finished run carried on to a later point equals one run to that point from the start.
  short, c.eval_after = tuple(c.eval_after), tuple(c.eval_after)[:-1]
  assert tpop_run.run(c, str(tmp_path / "short"))["win_rate"] != one["win_rate"]
  c.eval_after = short
  longer = tpop_run.run(c, str(tmp_path / "short"))
  for key in ("win_rate", "interval", "preferences_stated", "rounds", "exploit_responses"):
    assert longer[key] == one[key], key
  c.eval_after = short[:1] + short[2:]  # drops a point: refused
  with pytest.raises(ValueError, match=r"differs.*'eval_after'"):
    tpop_run.run(c, str(tmp_path / "short"))
  c.eval_after = short
  c.w += 1.0
  with pytest.raises(ValueError, match=r"progress\.json: field 'config' differs.*'w'"):
    tpop_run.run(c, wd)


def test_reward_agreement_with_the_rule_counts_the_pairs_it_orders_right():
  """run.agreement (benchmarks/tpop_w.py's diagnostic) against a hand count: a reward falling
  with the word count orders every pair the concise rule tells apart as the rule does; its
  negation none."""
  from tapper_jax.tpop.run import agreement

  class Words:  # embedding: the word count
    def encode(self, texts):
      return np.array([[len(t.split())] for t in texts], np.float32)

  texts = ["a", "a b", "a b c", "x y"]  # concise scores -1, -2, -3, -2: 5 pairs apart
  rm = rl.UserRewardModel(1, hidden=1)
  for sign, want in ((-1.0, 1.0), (1.0, 0.0)):
    rm.params = {"w1": jnp.ones((1, 1)), "b1": jnp.zeros((1,)), "w2": jnp.array([sign]),
                 "b2": jnp.zeros(())}
    assert agreement(rm, "concise", texts, Words().encode(texts)) == (want, 5)


def test_latency_ratio_interval_resamples_queries_together():
  """The latency benchmark's interval of a time-per-token ratio: queries that are all twice as
  slow per token give exactly 2; otherwise it lies between the per-query ratios."""
  from tapper_jax.tpop.run import ratio_interval
  assert ratio_interval([2, 4, 6], [1, 2, 3], [1, 2, 3], [1, 2, 3]) == [2.0, 2.0]
  lo, hi = ratio_interval([2, 4, 9], [1, 2, 3], [1, 2, 3], [1, 2, 3])
  assert 2.0 <= lo < 15 / 6 < hi <= 3.0  # the pooled ratio 15/6 inside, per-query 2 and 3 bound


def test_rounds_user_refuses_broken_answers_by_full_forward_log_p(tmp_path, model_cache,
                                                                 monkeypatch):
  """gate_rounds: in every round the user is told which answers to refuse, and those are the
  ones whose mean log p per token, by full forwards of prompt + answer, lies more than `gate`
  below that of greedy's answer to the round's query."""
  tpop_config = _tpop_config()
  from tapper_jax import models
  from tapper_jax.tpop import run as tpop_run
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.user import SimulatedUser
  c = tpop_config.get_config("tiny")
  c.data_folder = str(_questions_folder(tmp_path))
  c.attributes, c.eval_after, c.gate_rounds, c.gate = ("concise",), (0, 4), True, 0.35
  rounds, told = [], []
  generate, preference = TwoArmDecoder.generate, SimulatedUser.preference

  def spy_generate(self, prompt_ids, rm, *, explore=True, trace=None):
    resp = generate(self, prompt_ids, rm, explore=explore, trace=trace)
    if explore:
      rounds.append((list(prompt_ids), resp.exploit_ids, resp.explore_ids))
    return resp

  def spy_preference(self, a, b, refused=(False, False)):
    told.append(tuple(refused))
    return preference(self, a, b, refused)

  monkeypatch.setattr(TwoArmDecoder, "generate", spy_generate)
  monkeypatch.setattr(SimulatedUser, "preference", spy_preference)
  tpop_run.run(c, str(tmp_path / "wd"))
  assert len(rounds) == len(told) == 4
  llm, tok = models.load(c.model)
  train, _ = tpop_run.queries(c.data_folder, c.split, c.train_queries, c.eval_queries)

  want = []
  for q, (prompt, ex1, ex2) in zip(train, rounds):
    assert prompt == tpop_run.chat_ids(tok, q)
    greedy_ids = tpop_run.greedy_answer(llm, tok, q, max_new_tokens=c.max_new_tokens)[1]
    g = _full_forward_mean_logprob(llm, prompt, greedy_ids)
    want.append(tuple(bool(_full_forward_mean_logprob(llm, prompt, ids) < g - 0.35)
                      for ids in (ex1, ex2)))
  assert told == want
  assert any(any(t) for t in told) and not all(all(t) for t in told)  # the gate binds


def test_llm_features_pool_each_text_alone_against_unpadded_forwards(decoder_parts):
  """Batched, right-padded and cut to max_tokens, each text's mean and last features equal the
  mean and last row of the LLM's hidden states over that text alone (no padding): a pad token
  counted, a mask ignored or an off-by-one last index fails."""
  from tapper_jax.tpop.features import LLMTextEncoder
  llm, tok, _ = decoder_parts
  texts = ["Rain again", "A much longer headline about the city council budget vote", "", "x"]
  for pool in ("mean", "last"):
    got = LLMTextEncoder(llm, tok, pool, batch_size=3, max_tokens=6).encode(texts)
    assert got.shape == (len(texts), llm.config.hidden_size)
    for i, t in enumerate(texts):
      ids = tok.encode(t, add_bos=True)[:6] or [tok.eos_id]
      h, _ = llm.hidden_states(jnp.asarray([ids]))
      h = np.asarray(h[0], np.float32)
      want = h.mean(0) if pool == "mean" else h[-1]
      np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=2e-5, err_msg=f"{pool} {t!r}")
  assert not np.allclose(LLMTextEncoder(llm, tok, "mean").encode(texts[:2]),
                         LLMTextEncoder(llm, tok, "last").encode(texts[:2]))


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_feature_cache_equals_encoding_each_text_whole(decoder_parts, pool):
  """Two arms' texts grown token by token, some steps not embedded (their tokens ride along the
  next call), EOS taken mid-text and offered as a candidate: every cached candidate feature
  equals encode_ids of that arm's whole text + the candidate, one forward per text. Candidates
  that saw each other, a pending token at a wrong position or a silent token counted all fail."""
  from tapper_jax.tpop.features import FeatureCache, LLMTextEncoder
  llm, tok, _ = decoder_parts
  enc = LLMTextEncoder(llm, tok, pool)
  fc = FeatureCache(enc, 2)
  rng = np.random.default_rng(0)
  texts, checked = [[], []], 0
  for step in range(9):
    cands = {a: np.concatenate([rng.integers(3, llm.config.vocab_size, 5), [tok.eos_id]])
             for a in range(2)}
    if step % 3 == 2:
      del cands[1]  # arm 2 not scored this step
    got = {} if step % 4 == 3 else fc.features(cands)
    for a, f in got.items():
      want = enc.encode_ids([texts[a] + [int(c)] for c in cands[a]])
      np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-5, err_msg=f"step {step} arm {a}")
      checked += 1
    for a in range(2):
      t = tok.eos_id if step == 4 else int(rng.integers(3, llm.config.vocab_size))
      texts[a].append(t)
      fc.append(a, t)
  assert checked == 11
  np.testing.assert_allclose(  # EOS leaves the text as it is
      enc.encode_ids([[5, 6, tok.eos_id]]), enc.encode_ids([[5, 6]]), rtol=1e-6)


def test_decoding_through_the_feature_cache_equals_embedding_every_text(decoder_parts):
  """A preference round (both arms, exploration on, min_p) and serving give the same tokens
  with the LLM features cached as with every candidate's text embedded whole."""
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import load_encoder
  llm, tok, _ = decoder_parts
  enc = load_encoder("llm:mean", llm, tok)
  rm = _sharp_random_reward(enc.dim)
  rm.add(np.ones(enc.dim, np.float32), np.zeros(enc.dim, np.float32))
  ids = tok.encode("Write a headline for: rain over the hills")
  kw = dict(top_k=12, w=1.5, nu=0.5, max_new_tokens=8, reward_term="relative", min_p=0.5)
  cached, whole = (TwoArmDecoder(llm, tok, enc, feature_cache=f, **kw) for f in (True, False))
  assert cached.feature_cache and not whole.feature_cache
  for explore in (True, False):
    a, b = cached.generate(ids, rm, explore=explore), whole.generate(ids, rm, explore=explore)
    assert (a.exploit_ids, a.explore_ids) == (b.exploit_ids, b.explore_ids)
  assert a.exploit_ids != TwoArmDecoder(llm, tok, enc, **{**kw, "w": 0.0}).generate(
      ids, rm, explore=False).exploit_ids  # the reward moved a choice


def test_seeds_benchmark_rescores_each_run_and_pools_seeds_per_query(tmp_path):
  """benchmarks/tpop_seeds.py: each run's verdicts re-scored from its shown answers (a run whose
  reported rate disagrees is refused), the mean over seeds equals the hand mean of all verdicts,
  and runs of other held-out queries are refused."""
  greedy = ["A much longer greedy headline", "Short one", "Two words"]
  shown = {0: ["Short", "Much longer than that one", "Two more"],  # win, lose, tie
           1: ["Shorter than it", "Big one", "One"]}  # win, tie, win

  def write(seed, rate=None, queries=("q1", "q2", "q3")):
    wins = [SimulatedUser("concise").wins(a, b) for a, b in zip(shown[seed], greedy)]
    run = {"config": {"attributes": ["concise"], "seed": seed},
           "held_out": [{"query": q, "greedy": g} for q, g in zip(queries, greedy)],
           "exploit_responses": {"concise": {"50": shown[seed]}},
           "win_rate": {"concise": {"50": np.mean(wins) if rate is None else rate}},
           "gated_win_rate": {"concise": {"50": 0.25 * (seed + 1)}}}
    path = tmp_path / f"run{seed}{'' if rate is None else 'bad'}{len(queries[0])}.json"
    path.write_text(json.dumps(run))
    return str(path)

  def bench(*runs):
    return subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "tpop_seeds.py"),
                           f"--runs={','.join(runs)}", f"--output={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO)

  p = bench(write(0), write(1))
  assert p.returncode == 0, p.stderr[-3000:]
  row = json.loads((tmp_path / "tpop_seeds.json").read_text())["rows"]["concise"]
  assert row["win_rate"] == pytest.approx([(1 + 0 + 0.5) / 3, (1 + 0.5 + 1) / 3])
  assert row["mean"] == pytest.approx((1.5 + 2.5) / 6)
  assert row["interval"][0] <= row["mean"] <= row["interval"][1]
  assert row["gated_mean"] == pytest.approx(0.375)
  p = bench(write(0), write(1, rate=0.9))
  assert p.returncode != 0 and "re-scored" in p.stderr
  p = bench(write(0), write(1, queries=("other", "q2", "q3")))
  assert p.returncode != 0 and "different held-out queries" in p.stderr
