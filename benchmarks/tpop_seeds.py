"""T-POP over seeds: finished runs of the same held-out queries (tpop.run's tpop.json, one per
seed), each attribute's win rate at one point re-scored from the answers the runs showed, and
the mean over seeds with a 95% bootstrap interval over the held-out queries (a query's draw
keeps its answers of every seed together).

  python benchmarks/tpop_seeds.py --runs=RUN0/tpop.json,RUN1/tpop.json,RUN2/tpop.json \
      --point=50 --output=OUT

An attribute counts from the runs that hold it. Output: OUT/tpop_seeds.{md,json} (earlier ones
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

_RUNS = flags.DEFINE_list("runs", None, "tpop.json files of runs that differ in seed only.",
                          required=True)
_POINT = flags.DEFINE_integer("point", 50, "The preferences (or rounds) point compared.")
_OUT = flags.DEFINE_string("output", "bench_out/tpop", "Output folder.")


def rescored(run: dict, attribute: str, point: int) -> tuple[list[float], float]:
  """Per-query verdicts of a run's shown answers at `point` against its greedy answers, checked
  against the win rate the run reported, and its gated rate."""
  from tapper_jax.tpop.user import SimulatedUser
  greedy = [h["greedy"] for h in run["held_out"]]
  shown = run["exploit_responses"][attribute][str(point)]
  wins = [SimulatedUser(attribute).wins(a, b) for a, b in zip(shown, greedy)]
  if not np.isclose(np.mean(wins), run["win_rate"][attribute][str(point)]):
    raise ValueError(f"{attribute} at {point}: re-scored {np.mean(wins):.4f}, the run reported "
                     f"{run['win_rate'][attribute][str(point)]:.4f}")
  return wins, run["gated_win_rate"][attribute][str(point)]


def main(argv):
  del argv
  from tapper_jax.fileio import write_report
  from tapper_jax.tpop.run import interval
  runs = []
  for path in _RUNS.value:
    with open(path, encoding="utf-8") as f:
      runs.append((path, json.load(f)))
  queries = {tuple(h["query"] for h in r["held_out"]) for _, r in runs}
  if len(queries) != 1:
    raise ValueError("the runs asked different held-out queries: " + ", ".join(_RUNS.value))
  attributes = list(dict.fromkeys(a for _, r in runs for a in r["config"]["attributes"]))
  rows = {}
  for a in attributes:
    held = [(p, r) for p, r in runs if a in r["config"]["attributes"]
            and str(_POINT.value) in r["win_rate"][a]]
    scored = [rescored(r, a, _POINT.value) for _, r in held]
    wins = np.array([w for w, _ in scored])  # [seeds, queries]
    rows[a] = {"runs": [p for p, _ in held], "seeds": [r["config"]["seed"] for _, r in held],
               "win_rate": wins.mean(1).tolist(), "gated_win_rate": [g for _, g in scored],
               "mean": float(wins.mean()), "interval": interval(wins.mean(0)),  # queries resampled
               "gated_mean": float(np.mean([g for _, g in scored]))}
  out = {"point": _POINT.value, "queries": len(next(iter(queries))), "rows": rows}
  lines = [f"T-POP win rate over greedy after {_POINT.value} preferences, per seed and over "
           f"seeds ({out['queries']} held-out queries; in brackets the 95% bootstrap interval "
           "over queries)", "",
           "| attribute | seeds | win rate per seed | mean [95%] | gated per seed | gated mean |",
           "|---|---|---|---|---|---|"]
  for a, r in rows.items():
    lines.append(f"| {a} | {', '.join(map(str, r['seeds']))} | "
                 f"{' / '.join(f'{x:.2f}' for x in r['win_rate'])} | **{r['mean']:.2f}** "
                 f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}] | "
                 f"{' / '.join(f'{x:.2f}' for x in r['gated_win_rate'])} | {r['gated_mean']:.2f} |")
  write_report(os.path.join(_OUT.value, "tpop_seeds"), out, lines)


if __name__ == "__main__":
  app.run(main)
