"""T-POP: which text features let a reward learn each hidden rule? The reward MLP of a run's
config, fit (as tpop/oracle.py fits it) on N rule-ordered pairs of real headlines from the train
split's profiles, once per feature: the sentence encoder's embedding (what T-POP reads today)
and the frozen LLM's own hidden states, mean-pooled or at the last token (tpop/features.py).
Each fit is scored by its agreement with the rule (run.agreement: the share of pairs the rule
tells apart that the reward orders the same way) on headlines of the test split's profiles that
the fit never saw, and on the answers the runs showed for their held-out queries (the text decoding
actually scores). A feature that lifts agreement on the shown answers is one worth decoding with.

  python benchmarks/tpop_features.py --run=DIR[,DIR...] --pairs=50,2000 --eval_texts=400

Output: OUT/tpop_features.{md,json} (earlier ones kept, renamed with their time).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_RUN = flags.DEFINE_list("run", None, "Finished tpop.run workdirs: the first's config, every "
                        "one's shown answers.", required=True)
_PAIRS = flags.DEFINE_list("pairs", ["50", "2000"], "Rule-ordered pairs each reward is fit on.")
_FEATURES = flags.DEFINE_list("features", [], "Text encoders, as config.encoder names them "
                               "(default: the run's, llm:mean and llm:last).")
_FIT = flags.DEFINE_integer("fit_texts", 4000, "Train-split headlines the pairs are drawn from "
                            "(a random subset: the LLM embeds each one).")
_EVAL = flags.DEFINE_integer("eval_texts", 400, "Held-out headlines scored (a random subset).")
_ATTRS = flags.DEFINE_list("attributes", [], "Hidden rules (default: the run's).")
_OUT = flags.DEFINE_string("output", "", "Output folder (default: the run's folder).")


def main(argv):
  del argv
  from tapper_jax import models
  from tapper_jax.fileio import write_report
  from tapper_jax.tpop.features import load_encoder
  from tapper_jax.tpop.oracle import fit_oracle, headlines
  from tapper_jax.tpop.run import agreement, asked_queries, shown_answers
  runs = []
  for d in _RUN.value:
    with open(os.path.join(d, "tpop.json"), encoding="utf-8") as f:
      runs.append(json.load(f))
  cfg = runs[0]["config"]
  asked = asked_queries(cfg, cfg["split"], 0, True)
  rng = np.random.default_rng(cfg["seed"])

  def sample(texts, n):
    return [texts[i] for i in sorted(rng.choice(len(texts), min(n, len(texts)), replace=False))]

  fit_all = headlines(cfg["data_folder"], "train", asked, cfg["seed"])
  fit_pool, seen = sample(fit_all, _FIT.value), set(fit_all)
  held = sample([t for t in headlines(cfg["data_folder"], "test", asked, cfg["seed"])
                 if t not in seen], _EVAL.value)
  shown = sorted({t for r in runs for t in shown_answers(r)})
  llm, tok = models.load(cfg["model"])
  attributes = _ATTRS.value or cfg["attributes"]
  rows, t0 = [], time.time()
  for feat in _FEATURES.value or [cfg["encoder"], "llm:mean", "llm:last"]:
    enc = load_encoder(feat, llm, tok)
    e_fit, e_held, e_shown = (np.asarray(enc.encode(ts), np.float32)
                              for ts in (fit_pool, held, shown))
    for attribute in attributes:
      for n in map(int, _PAIRS.value):
        rm = fit_oracle(cfg, attribute, fit_pool, e_fit, n)
        a_held, p_held = agreement(rm, attribute, held, e_held)
        a_shown, p_shown = agreement(rm, attribute, shown, e_shown)
        rows.append({"feature": feat, "dim": int(e_fit.shape[1]), "attribute": attribute,
                     "pairs": len(rm.winners), "held_out_headlines": a_held,
                     "held_out_pairs": p_held, "shown_answers": a_shown, "shown_pairs": p_shown})
        print(json.dumps(rows[-1]), flush=True)
  names = ", ".join(os.path.basename(os.path.normpath(d)) for d in _RUN.value)
  header = (f"T-POP reward features, runs {names} "
            f"({cfg['model']}, encoder {cfg['encoder']}); fit on rule-ordered pairs of "
            f"{len(fit_pool)} train-split headlines and word-prefixes (of {len(fit_all)}); "
            f"scored on {len(held)} held-out test-split headlines and the runs' {len(shown)} "
            "shown answers; "
            f"{round((time.time() - t0) / 60, 1)} min.")
  lines = [header, "", "| feature (dim) | rule | pairs fit | agreement, held-out headlines "
           "| agreement, shown answers |", "|---|---|---|---|---|"]
  lines += [f"| {r['feature']} ({r['dim']}) | {r['attribute']} | {r['pairs']} | "
            f"{r['held_out_headlines']:.3f} | {r['shown_answers']:.3f} |" for r in rows]
  write_report(os.path.join(_OUT.value or _RUN.value[0], "tpop_features"),
               {"header": header, "rows": rows}, lines)


if __name__ == "__main__":
  app.run(main)
