"""T-POP latency per generated token against greedy decoding of the same LLM, measured in one
process on this machine, for the users a finished run saved: the exploit response (serving) and
a preference round (both arms, per token of one response), and where the exploit arm's time
goes (the sentence encoder's share, its rows and padded tokens per call).

  python benchmarks/tpop_latency.py --run=DIR [--split=dev --queries=20 | --held_out] [--top_k=40]
      [--w=4 --min_p=0.2 --budget=0.3]   (serving settings other than the run's)

DIR is a `tapper_jax.tpop.run` workdir (tpop.json + users/). Every query is decoded once untimed
first (every shape compiled), then greedy, exploit and round are timed back to back per query,
so that all three see the same load on the machine. No preference is added and no refit runs.
Output: OUT/tpop_latency_SPLIT.{md,json} (earlier ones kept, renamed with their time).
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

_RUN = flags.DEFINE_string("run", None, "A finished tpop.run workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", "dev", "Questions file the asked articles come from.")
_QUERIES = flags.DEFINE_integer("queries", 20, "Articles asked.")
_HELD = flags.DEFINE_bool("held_out", False, "Ask the run's own held-out queries (its split).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Candidates per arm (default: the run's).")
_OUT = flags.DEFINE_string("output", "", "Output folder (default: the run's folder).")
_MIN_P = flags.DEFINE_float("min_p", None, "Candidate filter min_p (default: the run's).")
_BUDGET = flags.DEFINE_float("budget", None, "Likelihood budget, nats per token (default: the "
                             "run's).")
_W = flags.DEFINE_float("w", None, "Serving weight w (default: the run's).")


class EncoderClock:
  """Times the text encoder's calls (`encode`: tokenizing too) and its forwards (`_embed`),
  with the rows and padded tokens each forward gets; the LLM features' cached calls
  (FeatureCache.features) count as both."""

  def __init__(self, enc):
    from tapper_jax.tpop.features import FeatureCache
    self.enc, self.enc_encode, self.enc_embed = enc, enc.encode, enc._embed
    self.reset()
    enc.encode, enc._embed = self._encode, self._embed
    cached, clock = FeatureCache.features, self
    self.restore_features = lambda: setattr(FeatureCache, "features", cached)

    def features(fc, cands):
      t0 = time.perf_counter()
      out = cached(fc, cands)
      dt = time.perf_counter() - t0
      clock.seconds += dt
      clock.forward_seconds += dt
      clock.calls += 1
      clock.rows += sum(map(len, out.values()))  # candidates embedded
      clock.tokens += fc.seen.shape[0] * fc.rows  # rows computed, padding included
      return out
    FeatureCache.features = features

  def close(self):
    """Puts back what the clock wrapped (the encoder's methods, the feature cache's class)."""
    self.enc.encode, self.enc._embed = self.enc_encode, self.enc_embed
    self.restore_features()

  def reset(self):
    self.seconds, self.calls, self.forward_seconds, self.rows, self.tokens = 0.0, 0, 0.0, 0, 0

  def _encode(self, texts, **kw):
    t0 = time.perf_counter()
    out = self.enc_encode(texts, **kw)
    self.seconds += time.perf_counter() - t0
    self.calls += 1
    return out

  def _embed(self, ids, mask):
    t0 = time.perf_counter()
    out = np.asarray(self.enc_embed(ids, mask))
    self.forward_seconds += time.perf_counter() - t0
    self.rows += ids.shape[0]
    self.tokens += ids.size
    return out


def main(argv):
  del argv
  from tapper_jax import models
  from tapper_jax.fileio import write_report
  from tapper_jax.tpop.decode import TwoArmDecoder
  from tapper_jax.tpop.features import load_encoder
  from tapper_jax.tpop.reward import UserRewardModel
  from tapper_jax.tpop.run import (asked_queries, chat_ids, greedy_answer, load_user,
                                    ratio_interval)
  import jax
  with open(os.path.join(_RUN.value, "tpop.json"), encoding="utf-8") as f:
    cfg = json.load(f)["config"]
  split = cfg["split"] if _HELD.value else _SPLIT.value
  asked = asked_queries(cfg, split, _QUERIES.value, _HELD.value)
  llm, tok = models.load(cfg["model"])
  enc = load_encoder(cfg["encoder"], llm, tok)
  clock = EncoderClock(enc)
  top_k = _TOP_K.value or cfg["top_k"]
  overrides = {k: f.value for k, f in (("min_p", _MIN_P), ("w", _W), ("budget", _BUDGET))
               if f.value is not None}
  dec = TwoArmDecoder.from_config(llm, tok, enc, cfg, top_k=top_k, **overrides)
  # The same decoder embedding every candidate's whole text: what the feature cache saves.
  whole = (TwoArmDecoder.from_config(llm, tok, enc, cfg, top_k=top_k, feature_cache=False,
                                     **overrides) if dec.feature_cache else None)
  greedy = lambda q: greedy_answer(llm, tok, q, max_new_tokens=cfg["max_new_tokens"])  # noqa: E731
  rows = {}
  for attribute in cfg["attributes"]:
    rm = UserRewardModel(enc.dim, hidden=cfg["hidden"], lam=cfg["lam"], lr=cfg["lr"])
    load_user(_RUN.value, f"sim-{attribute}", rm)
    for q in asked:  # untimed: every shape compiled
      greedy(q)
      dec.generate(chat_ids(tok, q), rm, explore=False)
      dec.generate(chat_ids(tok, q), rm)
      if whole:
        whole.generate(chat_ids(tok, q), rm, explore=False)
    # (seconds, tokens) of each query
    per_query = {"greedy": [], "exploit": [], "round": []} | ({"whole": []} if whole else {})
    encoder = {"seconds": 0.0, "calls": 0, "forward_seconds": 0.0, "rows": 0, "tokens": 0}
    for q in asked:
      t0 = time.perf_counter()
      _, g = greedy(q)
      per_query["greedy"].append((time.perf_counter() - t0, len(g)))
      clock.reset()
      r = dec.generate(chat_ids(tok, q), rm, explore=False)
      per_query["exploit"].append((r.seconds, r.tokens))
      for k in encoder:
        encoder[k] += getattr(clock, k)
      r = dec.generate(chat_ids(tok, q), rm)
      per_query["round"].append((r.seconds, r.tokens / 2))  # per token of one response
      if whole:
        r = whole.generate(chat_ids(tok, q), rm, explore=False)
        per_query["whole"].append((r.seconds, r.tokens))
    s = {k: np.sum(np.reshape(v, (-1, 2)), axis=0) for k, v in per_query.items()}  # in all
    ms = {k: 1e3 * t / max(n, 1) for k, (t, n) in s.items()}
    calls, exploit_s = max(encoder["calls"], 1), max(s["exploit"][0], 1e-12)
    rows[attribute] = {
        "preferences": len(rm.winners), "ms_per_token": ms,
        "ratio": {k: ms[k] / ms["greedy"] for k in ms if k != "greedy"},
        "exploit_ratio_interval": ratio_interval(*zip(*per_query["exploit"]),
                                                 *zip(*per_query["greedy"])),
        "exploit_encoder": {"share": encoder["seconds"] / exploit_s,
                            "forward_share": encoder["forward_seconds"] / exploit_s,
                            "calls_per_token": encoder["calls"] / max(s["exploit"][1], 1),
                            "calls": encoder["calls"], "rows": encoder["rows"],
                            "padded_tokens": encoder["tokens"],
                            "rows_per_call": encoder["rows"] / calls,
                            "padded_tokens_per_call": encoder["tokens"] / calls}}
    print(attribute, json.dumps(rows[attribute]), flush=True)
  clock.close()
  out = {"run": _RUN.value, "split": split, "held_out": _HELD.value, "queries": len(asked),
         "model": cfg["model"],
         "encoder": cfg["encoder"], "top_k": top_k, "w": dec.w, "lm_score": cfg["lm_score"],
         "reward_term": cfg.get("reward_term", "absolute"), "min_p": dec.min_p,
         "budget": dec.budget, "feature_cache": dec.feature_cache,
         "machine": f"{os.cpu_count()} CPUs, jax {jax.__version__} {jax.default_backend()}",
         "rows": rows}
  folder = _OUT.value or _RUN.value
  stem = os.path.join(folder, f"tpop_latency_{split}")
  lines = [f"T-POP latency per generated token vs greedy decoding ({len(asked)} {split} "
           f"queries, {cfg['model']}, top-{top_k}, w={dec.w:g}, LLM term {cfg['lm_score']}, "
           f"reward term {out['reward_term']}, min_p {dec.min_p:g}, budget {dec.budget:g}; "
           f"{out['machine']}; users of "
           f"{_RUN.value}; in brackets the 95% bootstrap interval over queries"
           f"{'; LLM features cached' if whole else ''})", "",
           "| user (preferences) | greedy ms | exploit ms (ratio) | round ms (ratio) | "
           "exploit, whole texts embedded ms (ratio) | encoder share of exploit (forward) | "
           "encoder calls per token | rows, padded tokens per call |",
           "|---|---|---|---|---|---|---|---|"]
  for a, r in rows.items():
    m, x = r["ms_per_token"], r["exploit_encoder"]
    lo, hi = r["exploit_ratio_interval"]
    lines.append(f"| {a} ({r['preferences']}) | {m['greedy']:.1f} | {m['exploit']:.1f} "
                 f"({r['ratio']['exploit']:.2f}x [{lo:.2f}, {hi:.2f}]) | {m['round']:.1f} "
                 f"({r['ratio']['round']:.2f}x) | "
                 + (f"{m['whole']:.1f} ({r['ratio']['whole']:.2f}x) | " if "whole" in m
                    else "- | ") +
                 f"{x['share']:.2f} ({x['forward_share']:.2f}) | {x['calls_per_token']:.2f} | "
                 f"{x['rows_per_call']:.1f}, {x['padded_tokens_per_call']:.0f} |")
  write_report(stem, out, lines)


if __name__ == "__main__":
  app.run(main)
