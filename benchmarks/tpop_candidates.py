"""Why the exploit response does not follow a reward that has learned the rule: at every step of
the exploit decoding of a run's held-out queries, is there a top-k candidate that would raise
the hidden rule's score of the text so far above the chosen token's, does the reward prefer it,
and by how much does the LLM term outweigh the reward term? (It always does where the raising
candidate was not chosen: the exploit arm takes the best sum; checked at every step.)

  python benchmarks/tpop_candidates.py --run=DIR --attributes=numbers,positive

DIR is a `tapper_jax.tpop.run` workdir (its config, held-out queries and saved users). For each
attribute, each step's chosen token c and its best "raising" candidate d (the highest exploit
score among those whose text scores higher under the rule) are compared:
  lm gap      LLM term(c) - LLM term(d)   (p or log p, the run's lm_score)
  reward gap  w (sigmoid r(x + d) - sigmoid r(x + c)) (the run's reward term: with "relative",
              each r less that of the LLM's most likely candidate)
Beside it, the spread of r over the run's answers, at the saved fit and at init.
Output: DIR/tpop_candidates.{md,json} (earlier ones kept, renamed with their time).
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
_ATTRS = flags.DEFINE_list("attributes", [], "Users to look at (default: all of the run's).")


def step_records(dec, rm, attribute: str, prompt_ids: list[int]) -> tuple[list[dict], int]:
  """(one record per exploit step that has a rule-raising candidate in the top-k, steps)."""
  import jax.numpy as jnp

  from tapper_jax.tpop.decode import reward_term
  from tapper_jax.tpop.user import score
  tok = dec.tokenizer
  trace: list = []
  resp = dec.generate(prompt_ids, rm, explore=False, trace=trace)
  out = []
  for i, lp in enumerate(trace[:len(resp.exploit_ids)]):
    term = np.exp(lp) if dec.lm_score == "prob" else lp
    prefix, chosen = resp.exploit_ids[:i], resp.exploit_ids[i]
    top = np.argpartition(-term, dec.top_k)[:dec.top_k]
    text = lambda c: tok.decode([t for t in prefix + [int(c)] if t not in dec.eos])  # noqa: E731
    base = score(attribute, text(chosen))
    raising = [int(c) for c in top if score(attribute, text(c)) > base]
    if not raising:
      continue
    anchor = int(top[np.argmax(term[top])])  # the LLM's most likely candidate
    emb = jnp.asarray(dec.embed_candidates([prefix], np.asarray([chosen] + raising + [anchor])))
    s = dec.w * np.asarray(reward_term(rm.params, emb[:-1], emb[-1], relative=dec.relative))
    j = int(np.argmax(term[raising] + s[1:]))
    rec = {"lm_gap": float(term[chosen] - term[raising[j]]), "reward_gap": float(s[1 + j] - s[0])}
    # The decoder chose c as the best LLM term + reward: no candidate's reward gap can exceed
    # its LLM gap. A check that this reading mirrors the decoding.
    assert rec["reward_gap"] <= rec["lm_gap"] + 1e-5, rec
    out.append(rec)
  return out, len(resp.exploit_ids)


def main(argv):
  del argv
  import jax.numpy as jnp

  from tapper_jax import models
  from tapper_jax.fileio import write_report
  from tapper_jax.tpop import reward as reward_lib
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import load_encoder
  from tapper_jax.tpop.reward import UserRewardModel
  from tapper_jax.tpop.run import chat_ids, load_user, shown_answers
  with open(os.path.join(_RUN.value, "tpop.json"), encoding="utf-8") as f:
    run = json.load(f)
  cfg = run["config"]
  llm, tok = models.load(cfg["model"])
  enc = load_encoder(cfg["encoder"], llm, tok)
  dec = TwoArmDecoder.from_config(llm, tok, enc, cfg)
  queries = [h["query"] for h in run["held_out"]]
  # The reward's scale over every answer the run showed (greedy and exploit): where its spread
  # is large, sigmoid(r) is 0 or 1 for most texts and cannot tell two continuations apart.
  emb = jnp.asarray(enc.encode(shown_answers(run)))
  rows = {}
  for attribute in _ATTRS.value or cfg["attributes"]:
    rm = UserRewardModel(enc.dim, hidden=cfg["hidden"], lam=cfg["lam"], lr=cfg["lr"],
                         seed=cfg["seed"])  # the run's initial reward model
    r_init = np.asarray(reward_lib.reward(rm.params, emb))
    load_user(_RUN.value, f"sim-{attribute}", rm)
    r_fit = np.asarray(reward_lib.reward(rm.params, emb))
    steps, recs, with_any = 0, [], 0
    for q in queries:
      ids = chat_ids(tok, q)
      r, n = step_records(dec, rm, attribute, ids)
      steps += n
      recs += r
      with_any += bool(r)
    lm = np.array([x["lm_gap"] for x in recs])
    rw = np.array([x["reward_gap"] for x in recs])
    rows[attribute] = {
        "preferences": len(rm.winners), "steps": steps, "steps_with_raising": len(recs),
        "queries_with_raising": with_any,
        "reward_prefers_raising": float((rw > 0).mean()) if recs else None,
        "median_lm_gap": float(np.median(lm)) if recs else None,
        "median_reward_gap": float(np.median(rw)) if recs else None,
        "reward_std": float(r_fit.std()), "reward_std_at_init": float(r_init.std()),
        "sigmoid_saturated": float(np.mean(np.abs(r_fit) > 4.6))}  # sigmoid < .01 or > .99
    print(attribute, rows[attribute], flush=True)
  out = {"run": _RUN.value, "queries": len(queries), "top_k": cfg["top_k"], "w": cfg["w"],
         "lm_score": cfg["lm_score"], "reward_term": cfg.get("reward_term", "absolute"),
         "reg": cfg.get("reg", 0.0), "rows": rows}
  stem = os.path.join(_RUN.value, "tpop_candidates")
  fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
  lines = [f"Exploit decoding of {len(queries)} held-out queries ({_RUN.value}; "
           f"top-{cfg['top_k']}, w={cfg['w']}, LLM term {cfg['lm_score']}, reward term "
           f"{cfg.get('reward_term', 'absolute')}, reg {cfg.get('reg', 0.0)}): steps with a "
           "top-k candidate that raises the rule's score over the chosen token's", "",
           "| attribute (preferences) | steps | with a raising candidate | queries with one | "
           "reward prefers it | median LLM gap | median reward gap | r std (at init) | "
           "sigmoid(r) < .01 or > .99 |",
           "|---|---|---|---|---|---|---|---|---|"]
  for a, r in rows.items():
    lines.append(f"| {a} ({r['preferences']}) | {r['steps']} | {r['steps_with_raising']} | "
                 f"{r['queries_with_raising']} | {fmt(r['reward_prefers_raising'])} | "
                 f"{fmt(r['median_lm_gap'])} | {fmt(r['median_reward_gap'])} | "
                 f"{r['reward_std']:.2f} ({r['reward_std_at_init']:.2f}) | "
                 f"{r['sigmoid_saturated']:.2f} |")
  write_report(stem, out, lines)


if __name__ == "__main__":
  app.run(main)
