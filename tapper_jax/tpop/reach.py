"""Can token-level steering reach a hidden attribute at all? (benchmarks/tpop_reach.py)

Along the base model's greedy answer, the steps where one of the top-k next tokens would raise
a rule's score of the text so far above the greedy token's. A query with no such step cannot be
won by a reward that picks among the top-k one step off the greedy path.
"""

from __future__ import annotations

import numpy as np


def reach(dec, prompt_ids: list[int], attributes: list[str],
          ks: list[int]) -> tuple[dict, int]:
  """{(attribute, k): steps of the greedy answer where a top-k token raises the rule's score over
  the greedy token's}, and the number of steps, for one prompt. `dec` decodes with w = nu = 0
  (greedy), its top_k at least max(ks)."""
  from tapper_jax.tpop.reward import UserRewardModel
  from tapper_jax.tpop.user import score
  trace: list = []
  rm = UserRewardModel(dec.encoder.dim, hidden=8)  # w = 0: its scores do not count
  ids = dec.generate(prompt_ids, rm, explore=False, trace=trace).exploit_ids
  out = {(a, k): 0 for a in attributes for k in ks}
  for i, lp in enumerate(trace[:len(ids)]):
    order = np.argsort(-lp, kind="stable")[:max(ks)]
    text = lambda c: dec.tokenizer.decode([t for t in ids[:i] + [int(c)]  # noqa: E731
                                           if t not in dec.eos])
    texts = [text(c) for c in order]
    base = text(ids[i])
    for a in attributes:
      s = np.array([score(a, t) for t in texts])
      for k in ks:
        out[(a, k)] += bool((s[:k] > score(a, base)).any())
  return out, len(ids)
