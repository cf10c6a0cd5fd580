"""T-POP serving weight: the exploit response's win rate against greedy decoding at several w,
each user's reward model as a finished run saved it (no refit, no rounds).

  python benchmarks/tpop_w.py --run=DIR --split=dev --queries=30 --ws=0.5,1,2,4 \
      [--terms=absolute,relative] [--lm_scores=prob,logprob] [--min_ps=0,0.1] [--budgets=0,0.3] \
      [--regs=saved,0,1]

DIR is a `tapper_jax.tpop.run` workdir (tpop.json + users/). Its config gives the model,
encoder, top-k and lengths; --split names the questions file whose first --queries articles are
asked (choose w on dev, then report the chosen w on the run's held-out test queries with
--split=test --held_out). The queries asked never appear in the run's preference stream
(checked). Beside it, how often each reward model orders a pair of the run's held-out answers
(greedy and exploit) as the hidden rule does: whether it is the reward or the decoding that
falls short; and each setting's fluency, the frozen LLM's mean log p per token of its answers
(greedy's beside it), and how the answers end (run.answer_shape: stopped by EOS, or run to the
token cap; words per token). --terms sweeps the reward term, --lm_scores the LLM term, --min_ps
the candidate filter and --budgets the likelihood budget (decode.py), --max_new_tokens the
answers' token cap (a longer one than the run's judges whole answers: a rule such as concise can
be won by answers cut short), --regs the refit's pull to init:
"saved" is the run's own fit, a number replays the run's preferences in their order through the
run's refits with that reg (the reward model the run would have ended with, had it shown the same
pairs); "negated" is the saved reward times -1, a control: the same steering strength in the
opposite direction. A rule that the negated reward wins as well is won by moving away from greedy,
not by what the reward learned. "oracle" is a reward fit, as the run's refits fit, on
--oracle_pairs pairs of real headlines (and a word-prefix of each, the partial text decoding
scores) from --oracle_split's profiles, ordered by the hidden rule itself (never an asked
article's): what serving reaches with a reward near the rule, apart from what 50 preferences
taught; its agreement column says how near. Every win rate comes with a gated one (--gate):
that of a user who refuses broken text, an answer the frozen LLM finds more than GATE nats per
token less likely than its own greedy answer. Output: OUT/tpop_w_SPLIT.{md,json} (earlier ones
kept, renamed with their time).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_RUN = flags.DEFINE_string("run", None, "A finished tpop.run workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "dev", "Questions file the asked articles come from.")
_QUERIES = flags.DEFINE_integer("queries", 30, "Articles asked.")
_HELD = flags.DEFINE_bool("held_out", False, "Ask the run's own held-out queries (its split).")
_WS = flags.DEFINE_list("ws", ["0.5", "1", "2", "4"], "Serving weights w of the reward.")
_OUT = flags.DEFINE_string("output", "", "Output folder (default: the run's folder).")
_TERMS = flags.DEFINE_list("terms", [], "Reward terms (default: the run's).")
_REGS = flags.DEFINE_list("regs", ["saved"], "'saved', 'negated' (the saved reward times -1: "
                          "a control), 'oracle' (fit on rule-ordered headlines) or refit pulls "
                          "to init, replayed.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Candidates per arm (default: the run's).")
_LM_SCORES = flags.DEFINE_list("lm_scores", [], "LLM terms, prob or logprob (default: the run's).")
_MIN_PS = flags.DEFINE_list("min_ps", [], "Candidate filters min_p (default: the run's).")
_BUDGETS = flags.DEFINE_list("budgets", [], "Likelihood budgets, nats per token (default: the "
                             "run's).")
_ORACLE_PAIRS = flags.DEFINE_integer("oracle_pairs", 2000, "Rule-ordered pairs --regs=oracle "
                                     "is fit on.")
_ORACLE_SPLIT = flags.DEFINE_string("oracle_split", "train", "Questions file whose profile "
                                    "headlines --regs=oracle is fit on.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "Token cap of greedy and exploit answers "
                                "(default: the run's). A longer cap than the run's judges whole "
                                "answers, not ones cut short.")
_GATE = flags.DEFINE_float("gate", None, "Fluency gate, nats per token (default: the run's): "
                           "beside each win rate, the rate of a user who refuses broken text "
                           "(user.gated_win).")


def replayed(saved, cfg: dict, reg: float):
  """A reward model fed `saved`'s preferences in order, refit after each as the run did, with
  pull `reg`. The stored pairs are already in the order the run fit them (flipped under
  official_sign), so they are replayed unflipped."""
  from tapper_jax.tpop.reward import UserRewardModel
  m = UserRewardModel(saved.embed_dim, hidden=cfg["hidden"], lam=cfg["lam"], lr=cfg["lr"],
                      reg=reg, seed=cfg["seed"], official_covariance=cfg["official_covariance"],
                      refit_from_init=cfg.get("refit_from_init", False))
  for win, lose in zip(saved.winners, saved.losers):
    m.add(win, lose)
    m.refit()
  return m


def negated(saved):
  """A copy of `saved` whose reward is -r (output layer negated): the opposite preference."""
  import copy
  m = copy.copy(saved)
  m.params = {**saved.params, "w2": -saved.params["w2"], "b2": -saved.params["b2"]}
  return m


def main(argv):
  del argv
  import jax.numpy as jnp

  from tapper_jax import models
  from tapper_jax.fileio import write_report
  from tapper_jax.tpop import reward as reward_lib
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import load_encoder
  from tapper_jax.tpop.oracle import fit_oracle, headlines
  from tapper_jax.tpop.reward import UserRewardModel
  from tapper_jax.tpop.run import (ADDED, agreement, answer_shape, asked_queries, chat_ids,
                                    greedy_answer, interval, load_user, shown_answers)
  from tapper_jax.tpop.user import SimulatedUser, gated_win
  with open(os.path.join(_RUN.value, "tpop.json"), encoding="utf-8") as f:
    run = json.load(f)
  cfg = run["config"]
  split = cfg["split"] if _HELD.value else _SPLIT.value
  asked = asked_queries(cfg, split, _QUERIES.value, _HELD.value)
  llm, tok = models.load(cfg["model"])
  enc = load_encoder(cfg["encoder"], llm, tok)
  cap = _MAX_NEW.value or cfg["max_new_tokens"]
  gate = _GATE.value if _GATE.value is not None else cfg.get("gate", ADDED["gate"])
  base, base_ids = zip(*[greedy_answer(llm, tok, q, max_new_tokens=cap) for q in asked])
  top_k = _TOP_K.value or cfg["top_k"]
  # A setting: a reward term, named with its LLM term, min_p and budget where not the run's.
  run_min_p, run_budget = cfg.get("min_p", 0.0), cfg.get("budget", 0.0)
  settings = {t + ("" if lm == cfg["lm_score"] else f" {lm}")
              + ("" if mp == run_min_p else f" min_p={mp:g}")
              + ("" if bu == run_budget else f" budget={bu:g}"): TwoArmDecoder.from_config(
      llm, tok, enc, cfg, top_k=top_k, lm_score=lm, reward_term=t, min_p=mp, budget=bu,
      max_new_tokens=cap)
      for lm in (_LM_SCORES.value or [cfg["lm_score"]])
      for t in (_TERMS.value or [cfg.get("reward_term", "absolute")])
      for mp in ([float(m) for m in _MIN_PS.value] or [run_min_p])
      for bu in ([float(b) for b in _BUDGETS.value] or [run_budget])}
  terms = list(settings)
  dec0 = next(iter(settings.values()))
  # Fluency: the frozen LLM's mean log p per token of the answers (greedy's here).
  greedy_lps = [dec0.mean_logprob(chat_ids(tok, q), g) for q, g in zip(asked, base_ids)]
  greedy_lp = float(np.nanmean(greedy_lps))
  ws = [float(w) for w in _WS.value]
  # Is it the reward model or the decoding? Each reward's agreement with its hidden rule on
  # every answer the run showed for its held-out queries (greedy and exploit, all attributes).
  texts = shown_answers(run)
  emb = enc.encode(texts)
  if "oracle" in _REGS.value:  # one headline pool, embedded once, for every attribute's oracle
    pool = headlines(cfg["data_folder"], _ORACLE_SPLIT.value, asked, cfg["seed"])
    pool_emb = enc.encode(pool)
  rows = {}  # "attribute" or "attribute reg=R" -> agreement and {term: {w: win rate}}
  for attribute in cfg["attributes"]:
    saved = UserRewardModel(enc.dim, hidden=cfg["hidden"], lam=cfg["lam"], lr=cfg["lr"])
    load_user(_RUN.value, f"sim-{attribute}", saved)
    user = SimulatedUser(attribute)
    for reg in _REGS.value:
      if reg in ("saved", "negated"):
        rm, key = saved, attribute
        if reg == "negated":
          rm, key = negated(saved), f"{attribute} negated"
      elif reg == "oracle":
        rm = fit_oracle(cfg, attribute, pool, pool_emb, _ORACLE_PAIRS.value)
        key = f"{attribute} oracle"
      else:
        rm, key = replayed(saved, cfg, float(reg)), f"{attribute} reg={float(reg):g}"
      row = rows[key] = {"attribute": attribute, "reg": reg, "preferences": len(rm.winners)}
      row["agreement"], row["pairs"] = agreement(rm, attribute, texts, emb)
      row["reward_std"] = float(np.std(np.asarray(reward_lib.reward(rm.params, jnp.asarray(emb)))))
      for t, dec in settings.items():
        for w in ws:
          dec.w = w
          wins, lps, shown, shown_ids = [], [], [], []
          for q, b in zip(asked, base):
            resp = dec.generate(chat_ids(tok, q), rm, explore=False)
            shown.append(resp.exploit.strip())
            shown_ids.append(resp.exploit_ids)
            wins.append(user.wins(shown[-1], b))
            lps.append(dec.mean_logprob(chat_ids(tok, q), resp.exploit_ids))
          gated = [gated_win(x, lp, g, gate) for x, lp, g in zip(wins, lps, greedy_lps)]
          row.setdefault(t, {})[w] = {"win_rate": float(np.mean(wins)), "interval": interval(wins),
                                      "logprob": float(np.nanmean(lps)),
                                      "gated_win_rate": float(np.mean(gated)),
                                      "gated_interval": interval(gated),
                                      "wins": wins, "logprobs": lps,
                                      "shape": answer_shape(shown_ids, shown, dec.eos)}
          print(f"{key} {t} w={w}: {np.mean(wins):.3f} (gated {np.mean(gated):.3f}), "
                f"log p {np.nanmean(lps):.2f}", flush=True)
  out = {"run": _RUN.value, "split": split, "held_out": _HELD.value, "queries": len(asked),
         "model": cfg["model"], "top_k": top_k, "max_new_tokens": cap, "gate": gate,
         "ws": ws, "terms": terms, "greedy_logprob": greedy_lp, "greedy_logprobs": greedy_lps,
         "rows": rows,
         "greedy_shape": answer_shape(base_ids, base, dec0.eos)}
  folder = _OUT.value or _RUN.value
  stem = os.path.join(folder, f"tpop_w_{split}")
  lines = [f"T-POP exploit win rate vs greedy at serving weight w ({len(asked)} {split} queries"
           f"{', the run held out' if _HELD.value else ''}; top-{top_k}; reward models of "
           f"{_RUN.value}; answers of at most {cap} tokens; in brackets the 95% bootstrap "
           f"interval; then the LLM's mean log p per token of the answers, greedy's "
           f"{greedy_lp:.2f}; then, "
           f"gated, the win rate of a user who refuses an answer more than {gate:g} nats "
           f"per token less likely than greedy's to the same query)", "",
           "| attribute (preferences) | reward agrees with the rule | r std | " + " | ".join(
               f"{t} w={w:g}" for t in terms for w in ws) + " |",
           "|---|---|---|" + "---|" * (len(ws) * len(terms))]
  for a, r in rows.items():
    lines.append(f"| {a} ({r['preferences']}) | {r['agreement']:.2f} ({r['pairs']} pairs) | "
                 f"{r['reward_std']:.2f} | " + " | ".join(
        f"{r[t][w]['win_rate']:.2f} [{r[t][w]['interval'][0]:.2f}, {r[t][w]['interval'][1]:.2f}]"
        f" {r[t][w]['logprob']:.2f}; gated {r[t][w]['gated_win_rate']:.2f}"
        for t in terms for w in ws) + " |")
  g = out["greedy_shape"]
  lines += ["", f"How the answers end: share stopped by EOS (the rest ran to the cap of "
            f"{cap} tokens) / words per token; greedy {g['stopped']:.2f} / "
            f"{g['words_per_token']:.2f}", "",
            "| attribute | " + " | ".join(f"{t} w={w:g}" for t in terms for w in ws) + " |",
            "|---|" + "---|" * (len(ws) * len(terms))]
  for a, r in rows.items():
    lines.append(f"| {a} | " + " | ".join(
        f"{r[t][w]['shape']['stopped']:.2f} / {r[t][w]['shape']['words_per_token']:.2f}"
        for t in terms for w in ws) + " |")
  write_report(stem, out, lines)


if __name__ == "__main__":
  app.run(main)
