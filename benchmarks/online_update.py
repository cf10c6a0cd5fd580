"""Online update: how close does fitting a new user's P_u with a few gradient steps come to
training stage 2 with that user included?

  python benchmarks/online_update.py --offline=data/offline --task=huffpost_2N \
      --backbone=bench_out/quality/runs/huffpost_2N_seed0/stage1/backbone \
      --full_run=bench_out/quality/runs/huffpost_2N_seed0/tap_per --holdout=20

The last `--holdout` evaluated users (by id) are left out of stage 2 (`stage2.holdout_users`).
On their test questions:
  (a) cold start        the held-out run, their P_u = 0 (history alone)
  (b) online, k steps   the held-out run, then each held-out user's P_u row fitted alone
                        (Personalizer.update_user) for k in --steps on their own records
  (c) trained with them a stage-2 run that included them (--full_run, or trained here)
Same backbone, recipe, prompts and decoding; paired bootstrap intervals against (c).
Output: OUT/online_update.{md,json,png} (earlier ones kept, renamed with their time).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "configs"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

_OFFLINE = flags.DEFINE_string("offline", os.path.join("data", "offline"), "Offline suite root.")
_TASK = flags.DEFINE_string("task", "huffpost_2N", "Offline task.")
_BACKBONE = flags.DEFINE_string("backbone", "", "A merged stage-1 backbone (else stage 1 runs).")
_FULL = flags.DEFINE_string("full_run", "", "A finished TAP-PER run that included every user.")
_HOLDOUT = flags.DEFINE_integer("holdout", 20, "Evaluated users left out of stage 2.")
_STEPS = flags.DEFINE_list("steps", ["1", "5", "20"], "Online-update step counts.")
_LR = flags.DEFINE_float("update_lr", 0.0, "Online-update learning rate (0: the table's).")
_OUT = flags.DEFINE_string("output", os.path.join("bench_out", "online_update"), "Output folder.")
_BOOT = flags.DEFINE_integer("bootstrap", 1000, "Paired bootstrap resamples.")
_TINY = flags.DEFINE_bool("tiny", False, "Smoke run: tiny random LLM, 2 steps a stage.")


def _config(workdir_backbone: str):
  import offline
  from recipes import CPU_RECIPE, SHORT_RATES
  from tapper_jax.training.defaults import set_field
  c = offline.get_config(_TASK.value + (",tiny" if _TINY.value else ""))
  c.data.folder = os.path.join(_OFFLINE.value, _TASK.value)
  c.progress = False
  for k, v in {**SHORT_RATES, **CPU_RECIPE.get(_TASK.value, {})}.items():
    set_field(c, k, v)
  if _TINY.value:
    c.stage1.steps = c.stage2.steps = 2
    c.data.eval_max_examples = 24
  c.stage2.backbone = workdir_backbone
  return c


def _run(c, workdir):
  from tapper_jax.training.loop import train_and_evaluate
  path = os.path.join(workdir, "summary.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return train_and_evaluate(c, workdir)


def _online(workdir: str, held: list[str], steps: int, questions) -> dict:
  """Predictions for the held-out users' questions after fitting their rows for `steps`."""
  from tapper_jax.serving.personalizer import Personalizer
  from tapper_jax.serving.trained import Plan
  from tapper_jax.training import evaluation
  p = Personalizer.load(workdir, version=0)  # the held-out run's own table
  for u in held:
    p.update_user(u, [], steps=steps, learning_rate=_LR.value or None)
  t = p.t
  id_map = {u: i for i, u in enumerate(p.users)}
  plan = Plan(t.spec, [], questions)
  from tapper_jax.training import examples as ex
  examples = ex.question_examples(t.spec, questions)
  fields = t.method.fields(examples, plan, t.tokenizer, t.llm, id_map)
  with t.rules():
    preds = evaluation.predict(p._model(p.table), examples, t.prompts, t.config, fields.fields)
  return {e.id: x for e, x in zip(examples, preds)}


def main(argv):
  del argv
  from tapper_jax import metrics
  from tapper_jax.fileio import keep_previous
  from tapper_jax.metrics import paired_bootstrap
  from tapper_jax.data import lamp
  from tapper_jax.training import examples as ex
  out = os.path.abspath(_OUT.value)
  runs = os.path.join(out, "runs")
  os.makedirs(runs, exist_ok=True)
  t0 = time.time()
  backbone = _BACKBONE.value
  if not backbone:
    c = _config("")
    c.stage = "1"
    _run(c, os.path.join(runs, "stage1"))
    backbone = os.path.join(runs, "stage1", "backbone")
  full = _FULL.value
  if not full:
    c = _config(backbone)
    c.stage, c.eval_backbone = "2", False
    full = os.path.join(runs, "full")
    _run(c, full)
  c = _config(backbone)
  c.stage, c.eval_backbone = "2", False
  c.stage2.holdout_users = _HOLDOUT.value
  held_dir = os.path.join(runs, f"holdout{_HOLDOUT.value}")
  s_held = _run(c, held_dir)
  spec = lamp.task_of_folder(c.data.folder)
  qs, _ = lamp.load_split(c.data.folder, spec, c.data.eval_split)
  if c.data.eval_max_examples:
    qs = qs[: c.data.eval_max_examples]
  held = sorted(ex.held_out_users(qs, _HOLDOUT.value))
  asked = [q for q in qs if q.user_id in held]
  golds = {q.id: q.gold for q in asked}
  with open(os.path.join(full, "summary.json"), encoding="utf-8") as f:
    s_full = json.load(f)
  read = lambda path: {k: v for k, v in lamp.read_outputs(path)[1].items() if k in golds}  # noqa
  rows = {"(c) trained with them": read(s_full["predictions"]["TAP-PER"]),
          "(a) cold start": read(s_held["predictions"]["TAP-PER"])}
  for k in map(int, _STEPS.value):
    rows[f"(b) online update, {k} steps"] = _online(held_dir, held, k, asked)
  labels = spec.labels or None
  scores = {n: metrics.score(spec.name, [p[i] for i in golds], list(golds.values()),
                             labels=labels) for n, p in rows.items()}
  ref = rows["(c) trained with them"]
  intervals = {n: paired_bootstrap(spec.name, labels, golds, p, ref, _BOOT.value)
               for n, p in rows.items() if p is not ref}
  minutes = round((time.time() - t0) / 60, 1)
  keys = [k for k in next(iter(scores.values())) if not k.endswith("_mean")]
  lines = [f"Online update on {_TASK.value}: {len(held)} held-out users, {len(asked)} "
           f"{c.data.eval_split} questions; {minutes} min.", "",
           "| setting | " + " | ".join(keys) + " | row minus (c), 95% CI |",
           "|---|" + "---|" * (len(keys) + 1)]
  for n, v in scores.items():
    ci = intervals.get(n)
    ci_text = "; ".join(f"{k} [{lo:+.3f}, {hi:+.3f}]" for k, (lo, hi) in ci.items()) if ci else ""
    lines.append(f"| {n} | " + " | ".join(f"{v[k]:.4f}" for k in keys) + f" | {ci_text} |")
  text = "\n".join(lines)
  print(text)
  stem = os.path.join(out, "online_update")
  keep_previous(stem)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump({"scores": scores, "intervals": intervals, "held_out_users": held,
               "questions": len(asked), "minutes": minutes}, f, indent=2)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metric = keys[0]
  steps = [int(s) for s in _STEPS.value]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([0] + steps, [scores["(a) cold start"][metric]] +
          [scores[f"(b) online update, {k} steps"][metric] for k in steps], "o-",
          label="online update (0 = cold start)")
  ax.axhline(scores["(c) trained with them"][metric], color="tab:red", linestyle="--",
             label="trained with them")
  ax.set_xlabel("online-update steps")
  ax.set_ylabel(metric)
  ax.legend()
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=110)


if __name__ == "__main__":
  app.run(main)
