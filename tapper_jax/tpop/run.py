"""T-POP rounds against simulated users, then held-out evaluation.

  python -m tapper_jax.tpop.run --config=configs/tpop.py --workdir=DIR

Queries are real instruction prompts built from an offline LaMP-format folder: "Write a short
headline for this article: <article>" (the article text of each question). The first
`train_queries` feed the preference stream; the next `eval_queries` are held out (disjoint by
construction, and checked). For each hidden attribute a simulated user (tpop/user.py) sees the
two arms' responses to each training query and states a preference (none on a tie); the reward
model is refit on all of them. After 0, 10, 25, ... preferences stated (`config.count`; or
rounds played) the exploit arm answers every held-out query and the user judges it against the
base model's greedy answer (win 1, tie 0.5, loss 0). Each stream query is asked once: a user
whose stream runs out first has no figure for the later points.
Outputs in DIR: tpop.{json,md,png}, and users/<user id>/ (reward model + preferences +
covariance: `UserRewardModel.state`), from which a user continues later. A run stopped early
(`config.time_budget_s`, or killed) continues where it stopped when the same command is run
again: DIR/progress/ holds each attribute's state after every round.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/tpop.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.", required=True)

ARTICLE = "article:"


def queries(folder: str, split: str, n_train: int, n_eval: int) -> tuple[list[str], list[str]]:
  """(training stream, held-out) prompts from a LaMP-2N-style questions file, disjoint."""
  path = os.path.join(folder, f"{split}_questions.json")
  with open(path, encoding="utf-8") as f:
    rows = json.load(f)
  texts, seen = [], set()
  for i, r in enumerate(rows):
    inp = r.get("input", "")
    if ARTICLE not in inp:
      raise ValueError(f"{path}: record {i} (id {r.get('id')!r}), field 'input': no "
                       f"'{ARTICLE}' to take the article from")
    article = inp.split(ARTICLE, 1)[1].strip()
    if article and article not in seen:  # one prompt per distinct article
      seen.add(article)
      texts.append(f"Write a short headline for this article: {article[:600]}")
  if len(texts) < n_train + n_eval:
    raise ValueError(f"{path}: {len(texts)} distinct articles; {n_train + n_eval} asked for")
  train, held = texts[:n_train], texts[n_train:n_train + n_eval]
  assert not set(train) & set(held)
  return train, held


def asked_queries(cfg: dict, split: str, n: int, held_out: bool) -> list[str]:
  """The first n articles of `split` (or the run's own held-out ones), checked disjoint from the
  preference stream of the run whose config is `cfg`: what the benchmarks of a finished run ask."""
  stream, held = queries(cfg["data_folder"], cfg["split"], cfg["train_queries"],
                         cfg["eval_queries"])
  if held_out:
    asked = held
  else:
    asked = queries(cfg["data_folder"], split, 0, n)[1]
  if set(asked) & set(stream):
    raise ValueError(f"{split}: {len(set(asked) & set(stream))} asked queries are in the "
                     "run's preference stream")
  return asked


def _write_state(folder: str, rm) -> None:
  s = rm.state()
  np.savez(os.path.join(folder, "state.npz"), v_diag=s["v_diag"], winners=s["winners"],
           losers=s["losers"], **{f"params.{k}": v for k, v in s["params"].items()})


def _read_state(folder: str, rm) -> None:
  with np.load(os.path.join(folder, "state.npz")) as z:
    rm.load_state({"params": {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("params.")},
                   "v_diag": z["v_diag"], "winners": z["winners"], "losers": z["losers"]})


def save_user(folder: str, user_id: str, rm, meta: dict) -> str:
  """WORKDIR/users/<id>/ (state.npz + meta.json), written to a temporary folder and renamed."""
  from tapper_jax.fileio import atomic_folder, slug
  out = os.path.join(folder, "users", slug(user_id))
  if os.path.exists(out):
    os.replace(out, f"{out}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")  # kept
  with atomic_folder(out) as tmp:
    _write_state(tmp, rm)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump({"user": user_id, "preferences": len(rm.winners), **meta}, f, indent=2)
  return out


def load_user(folder: str, user_id: str, rm) -> None:
  from tapper_jax.fileio import slug
  _read_state(os.path.join(folder, "users", slug(user_id)), rm)


# A run continues where it stopped (config.time_budget_s, or a killed process): after every
# round and every evaluation, each attribute's progress (reward model, rounds played, the curve
# so far, the latency clock, the simulated user's random state) is written to
# WORKDIR/progress/<attribute>-<number>/, a new folder each time (the two latest kept).
_UNCHECKED = ("time_budget_s",)  # config fields a continued run may change
# Fields added since progress was first saved, with the value an older run had in effect.
ADDED = {"min_p": 0.0, "gate": 0.5, "gate_rounds": False, "budget": 0.0}
# Per point: win rate, its interval, the answers, preferences stated, rounds played, mean log p,
# answer_shape, gated win rate (user.gated_win), each answer's log p.
PARTS = ("curve", "interval", "answers", "stated", "rounds_at", "logprob", "shape", "gated",
         "logprobs")


def _save_progress(workdir: str, attribute: str, rm, progress: dict) -> None:
  import shutil

  from tapper_jax.fileio import atomic_folder, slug
  root = os.path.join(workdir, "progress")
  before = _progress_folders(root, attribute)
  seq = int(before[-1].rsplit("-", 1)[1]) + 1 if before else 0
  with atomic_folder(os.path.join(root, f"{slug(attribute)}-{seq:06d}")) as tmp:
    _write_state(tmp, rm)
    with open(os.path.join(tmp, "progress.json"), "w", encoding="utf-8") as f:
      json.dump(progress, f)
  for old in _progress_folders(root, attribute)[:-2]:
    shutil.rmtree(os.path.join(root, old))


def _progress_folders(root: str, attribute: str) -> list[str]:
  """An attribute's complete progress folders, oldest first."""
  from tapper_jax.fileio import slug
  if not os.path.isdir(root):
    return []
  pre = slug(attribute) + "-"
  return sorted(f for f in os.listdir(root) if f.startswith(pre) and f[len(pre):].isdigit())


def _load_progress(workdir: str, attribute: str, rm, config) -> dict | None:
  """The latest progress of `attribute` (rm restored), or None; a different config fails."""
  root = os.path.join(workdir, "progress")
  folders = _progress_folders(root, attribute)
  if not folders:
    return None
  path = os.path.join(root, folders[-1], "progress.json")
  with open(path, encoding="utf-8") as f:
    progress = json.load(f)
  now = json.loads(json.dumps(config.to_dict()))
  was = progress["config"]
  changed = sorted(k for k in set(now) | set(was)
                   if k not in _UNCHECKED and now.get(k) != was.get(k, ADDED.get(k))
                   and not (k == "eval_after" and _extends(now[k], was[k])))
  if changed:
    raise ValueError(f"{path}: field 'config' differs from this run's in {changed}: continue "
                     "with the same config, or use another workdir")
  _read_state(os.path.dirname(path), rm)
  return progress


def _extends(now, was) -> bool:
  """Whether evaluation points `now` keep every point of `was` and add only later ones: a
  finished run may then be carried on to them (to 100 preferences after 50)."""
  now, was = sorted(now), sorted(was)
  return now[:len(was)] == was and all(p > was[-1] for p in now[len(was):])


def chat_ids(tok, query: str) -> list[int]:
  """The query as the one user turn of the model's chat template, tokenized."""
  return tok.encode(tok.apply_chat_template([{"role": "user", "content": query}]))


def greedy_answer(llm, tok, query: str, *, max_new_tokens: int) -> tuple[str, list[int]]:
  """The base model's greedy answer and its generated ids (EOS included where it stopped), the
  prompt left-padded to a bucket (few compilations)."""
  from tapper_jax.models import greedy_generate
  from tapper_jax.models.tokenizer import bucket_length
  ids = chat_ids(tok, query)
  row, mask = tok.pad([ids], side="left", length=bucket_length(len(ids), smallest=32))
  out = np.asarray(greedy_generate(llm, row, mask, max_new_tokens=max_new_tokens))[0]
  eos = llm.config.eos_token_ids
  kept = [int(t) for t in out if t not in eos and t != tok.pad_id]
  stop = [int(t) for t in out if t in eos][:1]
  return tok.decode(kept).strip(), kept + stop


def interval(wins, n: int = 1000, seed: int = 0) -> list[float]:
  """95% bootstrap interval of a win rate (per-query wins 1 / 0.5 / 0 resampled)."""
  w = np.asarray(wins, float)
  rng = np.random.default_rng(seed)
  means = w[rng.integers(0, len(w), (n, len(w)))].mean(1)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def ratio_interval(num_s, num_n, den_s, den_n, n: int = 1000, seed: int = 0) -> list[float]:
  """95% bootstrap interval, over queries, of (sum num_s / sum num_n) / (sum den_s / sum den_n):
  one decoding's time per token against another's, queries resampled together."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(num_s), (n, len(num_s)))
  a, b, c, d = (np.asarray(x, float)[idx].sum(1) for x in (num_s, num_n, den_s, den_n))
  ratios = (a / np.maximum(b, 1)) / (c / np.maximum(d, 1))
  return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def shown_answers(out: dict) -> list[str]:
  """Every answer a run's tpop.json shows for its held-out queries: the greedy ones and each
  attribute's exploit ones at every point, once each, sorted."""
  return sorted({h["greedy"] for h in out["held_out"]} | {
      t for by_point in out["exploit_responses"].values() for ts in by_point.values() for t in ts})


def agreement(rm, attribute: str, texts: list[str], embeddings) -> tuple[float, int]:
  """(share of pairs the reward model orders as the hidden rule does, pairs): every pair of
  `texts` (embedded: `embeddings` [N,E]) that the rule tells apart."""
  import jax.numpy as jnp

  from tapper_jax.tpop import reward as reward_lib
  from tapper_jax.tpop.user import score
  s = np.array([score(attribute, t) for t in texts])
  r = np.asarray(reward_lib.reward(rm.params, jnp.asarray(embeddings)))
  i, j = np.triu_indices(len(texts), 1)
  apart = s[i] != s[j]
  same = np.sign(r[i] - r[j])[apart] == np.sign(s[i] - s[j])[apart]
  return float(same.mean()) if apart.any() else float("nan"), int(apart.sum())


def answer_shape(answers_ids: list[list[int]], texts: list[str], eos) -> dict:
  """How a set of answers ends and how wordy its tokens are: the share that stopped by an EOS
  (the rest ran to max_new_tokens), mean tokens (EOS excluded), and words (user.py's count) per
  token. Under a token cap a rule that counts words can be won by rarer, longer tokens
  ("Unsuspicious Footpolly") as well as by stopping sooner; this tells the two apart."""
  from tapper_jax.tpop.user import words
  eos = set(eos)
  tokens = [sum(t not in eos for t in ids) for ids in answers_ids]
  return {"stopped": float(np.mean([any(t in eos for t in ids) for ids in answers_ids])),
          "tokens": float(np.mean(tokens)),
          "words_per_token": sum(len(words(t)) for t in texts) / max(sum(tokens), 1)}


def _counts_preferences(config) -> bool:
  """What `config.eval_after` counts: stated preferences (a tie states none, so a point can take
  many rounds) or rounds played."""
  count = config.get("count", "rounds")
  if count not in ("preferences", "rounds"):
    raise ValueError(f"config.count: {count!r}; expected 'preferences' or 'rounds'")
  return count == "preferences"


def run(config, workdir: str, *, stop_after_rounds: int | None = None) -> dict | None:
  """The rounds and evaluations of every attribute; the results (also written to workdir), or
  None where it stopped early (config.time_budget_s, or `stop_after_rounds` played in this
  call: for tests) with its progress saved: the same call continues it."""
  from tapper_jax import models
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import load_encoder
  from tapper_jax.tpop.reward import UserRewardModel
  from tapper_jax.tpop.user import SimulatedUser, ceiling, gated_win, refuses
  by_preferences = _counts_preferences(config)  # before anything loads
  started, played = time.perf_counter(), 0
  budget = config.get("time_budget_s", 0.0)
  os.makedirs(workdir, exist_ok=True)
  llm, tok = models.load(config.model)
  enc = load_encoder(config.encoder, llm, tok)
  train_q, held_q = queries(config.data_folder, config.split, config.train_queries,
                            config.eval_queries)
  chat = functools.partial(chat_ids, tok)
  greedy = functools.partial(greedy_answer, llm, tok, max_new_tokens=config.max_new_tokens)

  # The reference answers (and every shape compiled), and how likely the LLM finds them.
  base, base_ids = map(list, zip(*[greedy(q) for q in held_q]))
  dec = TwoArmDecoder.from_config(llm, tok, enc, config)
  # Latency per generated token, timed at every evaluation after the first (compiled by then),
  # greedy and T-POP interleaved so that both see the same load on the machine.
  clock = {"greedy": [0.0, 0], "tpop_exploit": [0.0, 0], "tpop_two_arm": [0.0, 0]}
  results, stated = {}, {}  # win rate, and preferences stated, at each point reached
  spread = {}  # attribute -> point -> 95% bootstrap interval of the win rate
  answers = {}  # attribute -> point -> the exploit responses to the held-out queries
  last = max(config.eval_after)
  rounds_at = {}  # attribute -> eval point -> rounds played to reach it
  # attribute -> point -> the LLM's mean log p per token of the exploit answers (fluency)
  fluency = {}
  shape = {}  # attribute -> point -> answer_shape of the exploit answers
  base_shape = answer_shape(base_ids, base, dec.eos)
  base_logprobs = [dec.mean_logprob(chat(q), g) for q, g in zip(held_q, base_ids)]
  base_logprob = float(np.nanmean(base_logprobs))
  gated = {}  # attribute -> point -> win rate of a user who refuses broken text
  logprobs = {}  # attribute -> point -> each exploit answer's mean log p
  for attribute in config.attributes:
    user = SimulatedUser(attribute, noise=config.noise, seed=config.seed)
    rm = UserRewardModel(enc.dim, hidden=config.hidden, lam=config.lam, lr=config.lr,
                         reg=config.get("reg", 0.0), seed=config.seed,
                         official_sign=config.official_sign,
                         official_covariance=config.official_covariance,
                         refit_from_init=config.get("refit_from_init", False))
    curve, r, done = {}, 0, False
    parts = (curve, spread.setdefault(attribute, {}), answers.setdefault(attribute, {}),
             stated.setdefault(attribute, {}), rounds_at.setdefault(attribute, {}),
             fluency.setdefault(attribute, {}), shape.setdefault(attribute, {}),
             gated.setdefault(attribute, {}), logprobs.setdefault(attribute, {}))
    saved = _load_progress(workdir, attribute, rm, config)
    if saved is not None:
      r, done = saved["rounds"], saved["done"]
      # Finished at its last point, but later points are asked now (eval_after extended).
      done = done and not (last > max(saved["config"]["eval_after"]) and r < len(train_q))
      for part, key in zip(parts, PARTS):
        # JSON keys are strings; a part that progress from an older run lacks stays empty.
        part.update({int(k): v for k, v in saved.get(key, {}).items()})
      clock.update(saved["clock"])
      user.rng.bit_generator.state = saved["user_rng"]
      logging.info("%s: continued from %d rounds (%d preferences)", attribute, r, len(rm.winners))

    def save(done=False):
      _save_progress(workdir, attribute, rm, {  # noqa: B023  (the loop's current attribute)
          "rounds": r, "done": done, "clock": clock, "user_rng": user.rng.bit_generator.state,
          "config": config.to_dict(), **dict(zip(PARTS, parts))})

    while not done:
      # One round adds at most one preference, so counting either way no point is skipped.
      point = len(rm.winners) if by_preferences else r
      if point in config.eval_after and point not in curve:
        wins, shown, lps, shown_ids = [], [], [], []
        for q, b in zip(held_q, base):
          resp = dec.generate(chat(q), rm, explore=False)
          shown.append(resp.exploit.strip())
          shown_ids.append(resp.exploit_ids)
          lps.append(dec.mean_logprob(chat(q), resp.exploit_ids))
          wins.append(user.wins(shown[-1], b))
          if r > 0:
            t0 = time.perf_counter()
            _, g = greedy(q)
            clock["greedy"][0] += time.perf_counter() - t0
            clock["greedy"][1] += len(g)
            clock["tpop_exploit"][0] += resp.seconds
            clock["tpop_exploit"][1] += resp.tokens
        curve[point] = float(np.mean(wins))
        spread[attribute][point] = interval(wins)
        answers[attribute][point] = shown
        fluency[attribute][point] = float(np.nanmean(lps))
        shape[attribute][point] = answer_shape(shown_ids, shown, dec.eos)
        logprobs[attribute][point] = lps
        gated[attribute][point] = float(np.mean([
            gated_win(x, lp, g, config.gate) for x, lp, g in zip(wins, lps, base_logprobs)]))
        stated[attribute][point] = len(rm.winners)
        rounds_at[attribute][point] = r
        logging.info("%s: %d rounds (%d preferences), win rate %.3f", attribute, r,
                     len(rm.winners), curve[point])
        save()
      if point >= last or r >= len(train_q):
        if point < last:
          logging.warning("%s: the stream's %d queries ran out at %d %s; later points are "
                          "not reached", attribute, len(train_q), point,
                          "preferences" if by_preferences else "rounds")
        save_user(workdir, f"sim-{attribute}", rm, {"attribute": attribute})
        save(done=True)
        break
      q = train_q[r]
      resp = dec.generate(chat(q), rm)
      r += 1
      played += 1
      if r > 1:  # the first round compiles
        clock["tpop_two_arm"][0] += resp.seconds
        clock["tpop_two_arm"][1] += resp.tokens / 2  # per token of one response
      a, b = resp.exploit.strip(), resp.explore.strip()
      refused = (False, False)
      if config.gate_rounds:  # the user refuses broken answers in the rounds too
        lg = dec.mean_logprob(chat(q), greedy(q)[1])
        refused = tuple(refuses(dec.mean_logprob(chat(q), ids), lg, config.gate)
                        for ids in (resp.exploit_ids, resp.explore_ids))
      pref = user.preference(a, b, refused)
      if pref is not None:  # a tie states nothing: the round adds no preference
        ea, eb = dec.read([resp.exploit_ids, resp.explore_ids], texts=[a, b])  # as decoded
        if pref > 0:
          rm.add(ea, eb)
        else:
          rm.add(eb, ea)
        rm.refit()
      save()
      if (budget and time.perf_counter() - started > budget) or played == stop_after_rounds:
        logging.warning("%s: stopped after %d rounds (%d preferences); the same command "
                        "continues from %s", attribute, r, len(rm.winners),
                        os.path.join(workdir, "progress"))
        return None
    results[attribute] = curve
  per_token = {k: s / max(n, 1) for k, (s, n) in clock.items()}
  out = {"model": config.model, "encoder": config.encoder, "queries": {
      "source": f"{config.data_folder} ({config.split}): 'Write a short headline for this "
                "article: <article>'", "train": len(train_q), "held_out": len(held_q)},
         # Win rate after each point of eval_after, which counts `count` ("preferences"
         # stated, or "rounds" played); both are recorded for every point reached.
         "count": "preferences" if by_preferences else "rounds",
         "win_rate": results, "interval": spread, "preferences_stated": stated,
         # The win rate of a user who also refuses broken text: an answer more than `gate`
         # nats per token less likely to the LLM than greedy's loses (user.gated_win).
         "gate": config.gate, "gated_win_rate": gated,
         "rounds": rounds_at,
         # What any responses could reach against these greedy answers (user.ceiling).
         "ceiling": {a: ceiling(a, base) for a in config.attributes},
         "s_per_token": per_token,
         "latency_ratio": {k: per_token[k] / max(per_token["greedy"], 1e-12)
                           for k in ("tpop_exploit", "tpop_two_arm")},
         "config": config.to_dict(),
         "held_out": [{"query": q, "greedy": b} for q, b in zip(held_q, base)],
         "exploit_responses": answers,
         # The frozen LLM's mean log p per token of the held-out answers, greedy's and the
         # exploit arm's at each point: what the reward's steering costs in fluency.
         "mean_logprob": {"greedy": base_logprob, "exploit": fluency},
         "logprobs": {"greedy": base_logprobs, "exploit": logprobs},  # per held-out answer
         # answer_shape: whether a rule counting words was won by stopping sooner or by wordier
         # tokens under the max_new_tokens cap.
         "answer_shape": {"greedy": base_shape, "exploit": shape}}
  _write(workdir, out, config)
  return out


def _write(workdir: str, out: dict, config) -> None:
  """WORKDIR/tpop.{json,md,png}: the run's figures, its table (also printed), the curve."""
  from tapper_jax.fileio import write_report
  stem = os.path.join(workdir, "tpop")
  steps = list(config.eval_after)
  unit = out["count"]
  other, other_key = (("rounds", "rounds") if unit == "preferences"
                      else ("preferences stated: ties state none", "preferences_stated"))
  lines = [f"T-POP win rate of the exploit response over the base model's greedy response "
           f"({out['queries']['held_out']} held-out queries), {config.model}, after N {unit} "
           f"(in brackets, {other}; '-' where the stream of {out['queries']['train']} queries "
           "ran out first)", "",
           "| attribute | " + " | ".join(f"{s} {unit}" for s in steps) + " | ceiling |",
           "|---|" + "---|" * (len(steps) + 1)]
  for a, curve in out["win_rate"].items():
    n = out[other_key].get(a, {})
    lines.append(f"| {a} | " + " | ".join(f"{curve[s]:.2f} ({n[s]})" if s in curve else "-"
                                          for s in steps)
                 + f" | {out['ceiling'][a]:.2f} |")
  lines.append("")
  for a, curve in out["win_rate"].items():
    p = max(curve)
    lo, hi = out["interval"][a][p]
    lines.append(f"- {a} after {p} {unit}: 95% bootstrap interval over the held-out queries "
                 f"[{lo:.2f}, {hi:.2f}]")
  also = "; the rounds' user refused such answers too" if config.gate_rounds else ""
  lines += ["", f"Gated: the win rate of a user who also refuses broken text (an answer more "
            f"than {out['gate']:g} nats per token less likely to the LLM than greedy's loses"
            f"{also}): "
            + "; ".join(f"{a} " + ", ".join(f"{v:.2f} ({p})" for p, v in sorted(by.items()))
                        for a, by in out["gated_win_rate"].items()) + " (in brackets, the point)."]
  lp = out["mean_logprob"]
  lines += ["", f"The LLM's mean log p per token of the held-out answers (fluency): greedy "
            f"{lp['greedy']:.2f}; " + "; ".join(
                f"{a} " + ", ".join(f"{v:.2f} ({p})" for p, v in sorted(by.items()))
                for a, by in lp["exploit"].items()) + " (in brackets, the point)."]
  sh = out["answer_shape"]
  fmt = lambda d: (f"{d['stopped']:.2f} stopped by EOS, {d['tokens']:.1f} tokens, "  # noqa: E731
                   f"{d['words_per_token']:.2f} words per token")
  lines += ["", f"How the held-out answers end (the rest ran to max_new_tokens="
            f"{config.max_new_tokens}): greedy {fmt(sh['greedy'])}; " + "; ".join(
                f"{a} at {max(by)}: {fmt(by[max(by)])}" for a, by in sh["exploit"].items()
                if by) + "."]
  t, ratio = out["s_per_token"], out["latency_ratio"]
  lines += ["", f"Latency per generated token: greedy {t['greedy'] * 1e3:.1f} ms; T-POP exploit "
            f"response {t['tpop_exploit'] * 1e3:.1f} ms ({ratio['tpop_exploit']:.2f}x); a "
            f"preference round (both arms) {t['tpop_two_arm'] * 1e3:.1f} ms per token of one "
            f"response ({ratio['tpop_two_arm']:.2f}x)."]
  write_report(stem, out, lines)  # earlier figures kept, renamed with their time
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for a, curve in out["win_rate"].items():
    xs = [s for s in steps if s in curve]
    ax.plot(xs, [curve[s] for s in xs], "o-", label=a)
  ax.axhline(0.5, color="gray", linestyle=":")
  ax.set_xlabel(unit)
  ax.set_ylabel("win rate vs greedy (held out)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=110)


def main(argv):
  del argv
  run(_CONFIG.value, _WORKDIR.value)  # prints its table


if __name__ == "__main__":
  app.run(main)
