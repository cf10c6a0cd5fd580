"""Can token-level steering reach a hidden attribute at all? Along the base model's greedy answer
to each query, is there a step where one of the top-k next tokens would raise the rule's score
of the text so far above the greedy token's? A query with no such step cannot be won by any
reward that picks among the top-k at one step off the greedy path; the share of queries with one
bounds what T-POP can show there. Settings (k, attributes) are read here on dev, before a test run.

  python benchmarks/tpop_reach.py --data=OFFLINE/huffpost_2N --split=dev --queries=30 \
      --ks=10,40 --attributes=concise,numbers,positive,formal,casual

Output: OUT/tpop_reach_SPLIT.{md,json} (earlier ones kept, renamed with their time).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_DATA = flags.DEFINE_string("data", None, "An offline LaMP-2N-style folder.", required=True)
_SPLIT = flags.DEFINE_string("split", "dev", "Questions file the articles come from.")
_QUERIES = flags.DEFINE_integer("queries", 30, "Articles asked (the first ones).")
_KS = flags.DEFINE_list("ks", ["10", "40"], "Candidates per step (top-k).")
_ATTRS = flags.DEFINE_list("attributes", ["concise", "numbers", "positive", "formal", "casual"],
                           "Hidden attributes (tpop.user rules).")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "The frozen LLM.")
_NEW = flags.DEFINE_integer("max_new_tokens", 20, "Length of the greedy answers.")
_OUT = flags.DEFINE_string("output", "bench_out/tpop", "Output folder.")


def main(argv):
  del argv
  from tapper_jax import models
  from tapper_jax.fileio import write_report
  from tapper_jax.models import registry
  from tapper_jax.models.bert import SentenceEncoder
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.reach import reach
  from tapper_jax.tpop.run import chat_ids, queries
  ks = sorted(int(k) for k in _KS.value)
  attributes = list(_ATTRS.value)
  asked = queries(_DATA.value, _SPLIT.value, 0, _QUERIES.value)[1]
  llm, tok = models.load(_MODEL.value)
  enc = SentenceEncoder.from_pretrained(registry.encoder_folder("all-minilm-l6-v2"))
  dec = TwoArmDecoder(llm, tok, enc, top_k=max(ks), w=0.0, nu=0.0, max_new_tokens=_NEW.value)
  steps_with = {(a, k): 0 for a in attributes for k in ks}
  queries_with = dict(steps_with)
  steps = 0
  for q in asked:
    r, n = reach(dec, chat_ids(tok, q), attributes, ks)
    steps += n
    for key, v in r.items():
      steps_with[key] += v
      queries_with[key] += v > 0
  rows = {a: {k: {"queries_with": queries_with[(a, k)], "steps_with": steps_with[(a, k)]}
              for k in ks} for a in attributes}
  out = {"data": _DATA.value, "split": _SPLIT.value, "queries": len(asked), "steps": steps,
         "model": _MODEL.value, "ks": ks, "rows": rows}
  stem = os.path.join(_OUT.value, f"tpop_reach_{_SPLIT.value}")
  lines = [f"Greedy answers of {_MODEL.value} to {len(asked)} {_SPLIT.value} queries "
           f"({steps} steps): queries (steps) where a top-k token raises the rule's score over "
           "the greedy token's", "",
           "| attribute | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
  for a, r in rows.items():
    lines.append(f"| {a} | " + " | ".join(
        f"{r[k]['queries_with']} of {len(asked)} ({r[k]['steps_with']})" for k in ks) + " |")
  write_report(stem, out, lines)


if __name__ == "__main__":
  app.run(main)
