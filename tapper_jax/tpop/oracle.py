"""An oracle reward for T-POP diagnostics: the reward MLP fit on real headlines ordered by the
hidden rule itself, in place of a user's stated preferences. Served like a user's reward
(benchmarks/tpop_w.py --regs=oracle), it shows what decoding reaches with a reward near the rule,
apart from what a few preferences taught."""

from __future__ import annotations

import json
import os

import numpy as np

from tapper_jax.tpop.reward import UserRewardModel
from tapper_jax.tpop.user import rule_pairs


def headlines(folder: str, split: str, asked: list[str], seed: int) -> list[str]:
  """The distinct real headlines ("title") of a split's profile records, each with one of its
  word-prefixes beside it (decoding scores partial text), leaving out any record whose article
  an asked query holds."""
  with open(os.path.join(folder, f"{split}_questions.json"), encoding="utf-8") as f:
    rows = json.load(f)
  rng = np.random.default_rng(seed)
  texts = set()
  for r in rows:
    for rec in r.get("profile", []):
      title, text = (rec.get("title") or "").strip(), (rec.get("text") or "").strip()
      if not title or (text and any(text[:100] in q for q in asked)):
        continue
      texts.add(title)
      cut = title.split()
      if len(cut) > 2:
        texts.add(" ".join(cut[:int(rng.integers(1, len(cut)))]))
  return sorted(texts)


def fit_oracle(cfg: dict, attribute: str, texts: list[str], emb: np.ndarray, n: int):
  """A reward model fit on n pairs of `texts` (embedded: `emb` [N,E], once for every
  attribute) ordered by the hidden rule (user.rule_pairs), with the run's reward settings;
  five refits (1,000 Adam steps) over all of them."""
  pairs = rule_pairs(attribute, texts, n, seed=cfg["seed"])
  if not pairs:
    raise ValueError(f"--regs=oracle: the rule {attribute!r} ties every pair of {len(texts)} "
                     "headlines")
  row = {t: i for i, t in enumerate(texts)}
  m = UserRewardModel(emb.shape[1], hidden=cfg["hidden"], lam=cfg["lam"], lr=cfg["lr"],
                      reg=cfg["reg"], seed=cfg["seed"])
  for win, lose in pairs:
    m.add(emb[row[win]], emb[row[lose]])
  for _ in range(5):
    m.refit()
  return m
