"""Quality: every method row and ablation on the offline tasks (and any LaMP folder), one
backbone, one decoding, official metrics, paired bootstrap intervals against TAP-PER.

  python benchmarks/quality.py --budget=cpu --offline=data/offline --output=bench_out/quality
  python benchmarks/quality.py --budget=cpu-ablate --offline=data/offline --output=bench_out/quality
  python benchmarks/quality.py --budget=full --offline=data/offline --lamp=LaMP_2:/data/LaMP_2/time

Per task, stage 1 runs once (its merged backbone is shared by every row, and the backbone alone
is the "non-personalized" row). Each other row is one stage-2 run of the same code path with
switches (configs/offline.py + `stage2.*` fields):
  TAP-PER                         the full model
  non-personalized, trained as long   the bridge LoRA alone on the pooled stage-1 questions, as
                                  many stage-2 steps as TAP-PER (no user input anywhere)
  step-matched control            the bridge LoRA alone on TAP-PER's own stage-2 examples (the
                                  evaluated users' records), same steps: what the prefix adds
  ablations                       no P_u, no P_q, no time decay, no order decay, no bridge LoRA
  PPlug                           the persona plug (methods/pplug.py) on the same backbone
  RAG                             k retrieved records in the prompt (methods/rag.py): BM25,
                                  recency, dense; zero-shot on the backbone, or trained
  per-user LoRA                   OPPU-style, one LoRA per user (a stated subset of users on CPU)
TAP-PER is also evaluated with no personal input (P_u = 0, empty history) and with another
evaluated user's row and history. "No model" rows answer from the user's visible history alone
(`history_label_rows`: label tasks, the majority and the newest label; generation tasks, the
most similar past output, the newest, and another user's most similar). Rows resume: a row
whose summary.json exists is not rerun.
Output: OUT/quality.md (table, best per column in bold), OUT/quality.json, OUT/quality.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "configs"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from recipes import CPU_RECIPE, SHORT_RATES  # noqa: E402
from tapper_jax.fileio import keep_previous  # noqa: E402  (tests reach it here too)
from tapper_jax.metrics import paired_bootstrap, paired_mean_interval  # noqa: E402
from tapper_jax.training.setup import CONTROLS  # noqa: E402

_BUDGET = flags.DEFINE_enum("budget", "cpu", ["cpu", "cpu-ablate", "cpu-methods", "dev-rates",
                                             "dev-batches", "cpu-headlines",
                                             "cpu-headlines-epoch", "cpu-ratings",
                                             "cpu-ratings-150", "full"],
                            "Which budget.")
_OFFLINE = flags.DEFINE_string("offline", os.path.join("data", "offline"),
                               "Offline suite root (built here from --raw if missing).")
_RAW = flags.DEFINE_string("raw_data", os.path.join("..", "shared", "data", "raw"), "Raw data root.")
_LAMP = flags.DEFINE_multi_string("lamp", [], "Extra LaMP folders as CONFIG:FOLDER, e.g. "
                                  "lamp2:/data/LaMP_2/time (configs/lamp2.py, time setting).")
_OUT = flags.DEFINE_string("output", os.path.join("bench_out", "quality"), "Output folder.")
_SPLIT = flags.DEFINE_string("split", "test", "Evaluated split (choose settings on dev).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (each row is run once per seed).")
_TASKS = flags.DEFINE_list("only_tasks", [], "Restrict to these offline tasks (default: the budget's).")
_ROWS = flags.DEFINE_list("rows", [], "Restrict to the budget's rows whose names contain one of "
                          "these (e.g. 'without P_u,without P_q'); TAP-PER always runs.")
_BOOT = flags.DEFINE_integer("bootstrap", 1000, "Paired bootstrap resamples.")
_TINY = flags.DEFINE_bool("tiny", False, "Smoke run: the tiny random LLM, 2 steps a stage, 12 "
                          "questions of 3 users (checks the harness, measures nothing).")


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  fields: tuple = ()  # (dotted config field, value) overrides of the stage-2 run
  controls: tuple = ()  # extra evaluation rows of the same run
  method: str = "tapper"  # the stage-2 method (its defaults applied before `fields`)


TAPPER = Row("TAP-PER", controls=("no_personal", "other_user"))
LONG = Row("non-personalized, trained as long",
           (("stage2.prefix", False), ("stage2.examples", ("pooled",))))
STEP_MATCHED = Row("step-matched control (bridge LoRA alone)", (("stage2.prefix", False),))
PPLUG = Row("PPlug", controls=("no_personal", "other_user"), method="pplug")


def rag_row(retriever: str, k: int, zeroshot: bool, controls: tuple = ()) -> Row:
  name = f"RAG {retriever} k={k}" + (", zero-shot" if zeroshot else ", trained")
  return Row(name, (("rag.retriever", retriever), ("rag.k", k),
                    ("stage2.bridge_lora", not zeroshot)), controls, method="rag")


RAG_ZERO_SHOT = tuple(rag_row(r, k, True) for r, k in
                      (("bm25", 1), ("bm25", 4), ("recency", 1), ("recency", 4), ("dense", 4)))
RAG_TRAINED = (rag_row("bm25", 4, False),)  # the CPU budget's; `full` trains all four
RAG_TRAINED_ALL = tuple(rag_row(r, k, False) for r, k in
                        (("bm25", 1), ("bm25", 4), ("recency", 1), ("recency", 4)))
# OPPU-style: a LoRA per user costs a training run per user, so the CPU budget takes the first
# 20 evaluated users (sorted ids); its interval against TAP-PER is paired on their questions.
PER_USER = Row("per-user LoRA (20 users)", (("per_user.max_users", 20), ("per_user.steps", 10)),
               method="per_user_lora")
RATE_ROWS = (Row("TAP-PER, lambda lr 1e-2", (("stage2.lambda_learning_rate", 1e-2),)),
             Row("TAP-PER, lambda lr 1e-1", (("stage2.lambda_learning_rate", 1e-1),)),
             Row("TAP-PER, table lr 1e-3", (("stage2.table_learning_rate", 1e-3),)),
             # Higher: in 150 steps each user's row is in ~14 batches (0.2 of an epoch), and
             # TAP-PER changed 9% of the answers of the model without personal input.
             Row("TAP-PER, table lr 3e-2", (("stage2.table_learning_rate", 3e-2),)),
             Row("TAP-PER, table lr 1e-1", (("stage2.table_learning_rate", 1e-1),)),
             # P_q barely varied across users with raw z (tapper/attention.py): standardized,
             # with the controls that show what the personal input carries, P_q alone included.
             Row("TAP-PER, standardized z", (("stage2.standardize_z", True),),
                 controls=("no_personal", "other_user", "cold")),
             # Trained always with its row, P_q alone (the cold control) did not beat no
             # personal input: drop the row in training so P_q learns to stand alone.
             Row("TAP-PER, standardized z, P_u dropout 0.5",
                 (("stage2.standardize_z", True), ("stage2.user_dropout", 0.5)),
                 controls=("no_personal", "other_user", "cold")))
# Stage-2 batches cut from windows of 50 length-sorted batches (`train_length_groups`; HF's
# group_by_length uses 50-batch windows too): less padding, so a faster step per real token
# (benchmarks/train_loop.py), but rows of one batch are no longer a uniform draw.
GROUPED = Row("TAP-PER, batches grouped by length", (("train_length_groups", 50),))
ABLATIONS = (Row("TAP-PER without P_u", (("stage2.user_prefix", False),)),
             Row("TAP-PER without P_q", (("stage2.query_prefix", False),)),
             Row("TAP-PER without time decay", (("stage2.time_decay", False),)),
             Row("TAP-PER without order decay", (("stage2.order_decay", False),)),
             Row("TAP-PER without bridge LoRA", (("stage2.bridge_lora", False),)))

# budget -> (tasks, rows, per-task {field: value} of the budget's recipe)
HUFFPOST_CPU = {"huffpost_2N": {**SHORT_RATES, **CPU_RECIPE["huffpost_2N"]}}  # one-task budgets
BUDGETS = {
    "cpu": (("huffpost_2N", "movielens_2M"), (TAPPER, LONG, STEP_MATCHED),
            {t: {**SHORT_RATES, **CPU_RECIPE[t]} for t in ("huffpost_2N", "movielens_2M")}),
    "cpu-ablate": (("huffpost_2N",), (TAPPER,) + ABLATIONS, HUFFPOST_CPU),
    # Learning rates of the lambdas and the table, chosen on dev (run with --split=dev).
    "dev-rates": (("huffpost_2N",), (TAPPER,) + RATE_ROWS, HUFFPOST_CPU),
    # Whether batching by length (a speed lever) costs quality, on dev.
    "dev-batches": (("huffpost_2N",), (TAPPER, GROUPED), HUFFPOST_CPU),
    # The other methods beside TAP-PER, same data, steps and rates (issue 11).
    "cpu-methods": (("huffpost_2N",), (TAPPER, PPLUG) + RAG_ZERO_SHOT + RAG_TRAINED + (PER_USER,),
                    HUFFPOST_CPU),
    # Headlines (LaMP-4 style): does any personal input help, read as a prefix (TAP-PER) or as
    # text (RAG)? Run with --split=dev: it diagnoses, it does not report.
    # At 150 steps the gold's NLL is the same with the user's input, none or another user's:
    # does a user's row read anything after an epoch (~66 updates a row, not ~13)?
    "cpu-headlines": (("huffpost_4",), (TAPPER, STEP_MATCHED, rag_row("bm25", 4, True),
                                        Row("TAP-PER, one epoch",
                                            (("stage2.steps", 0), ("stage2.epochs", 1)),
                                            controls=("no_personal", "other_user", "cold")),
                                        # The official code's stage 2 for news_headline
                                        # (heng380/TAP-PER task_LoRA_ragpag.py) on this stage 1:
                                        # 3 epochs, one rate 2e-4 (the table's too), batch
                                        # 4 x 8 GPUs, warmup 0.1.
                                        Row("TAP-PER, official stage-2 recipe",
                                            (("stage2.steps", 0), ("stage2.epochs", 3),
                                             ("stage2.learning_rate", 2e-4),
                                             ("stage2.table_learning_rate", 2e-4),
                                             ("stage2.batch_size", 32), ("stage2.warmup", 0.1)),
                                            controls=("no_personal", "other_user", "cold")),
                                        # Zero-shot RAG fell below the backbone: trained on
                                        # its retrieval-augmented prompts, with its controls.
                                        rag_row("bm25", 4, False, ("no_personal", "other_user"))),
                      {"huffpost_4": {**SHORT_RATES, **CPU_RECIPE["huffpost_4"]}}),
    # The same rows at one stage-2 epoch (765 steps), the length at which the gold's NLL on
    # dev first separated the user's own input from none and another user's; to report, on
    # test. RAG with another user's records: what the user's own text adds.
    "cpu-headlines-epoch": (("huffpost_4",), (TAPPER, STEP_MATCHED,
                                              rag_row("bm25", 4, True, ("other_user",))),
                            {"huffpost_4": {**SHORT_RATES, **CPU_RECIPE["huffpost_4"],
                                            "stage2.steps": 0, "stage2.epochs": 1}}),
    # Ratings (LaMP-3 style, 610 users, 610 questions a split): the first figures of this
    # task. Run with --split=dev first. 300 + 300 steps of 8: each user's row sees about 4
    # updates, so what stage 2 can add here is mostly P_q reading the user's past ratings.
    "cpu-ratings": (("movielens_3",), (TAPPER, STEP_MATCHED),
                    {"movielens_3": {**SHORT_RATES, **CPU_RECIPE["movielens_3"]}}),
    # On all 610 users (0.05 of an epoch) the personal input did not help, while the user's
    # mean rating beats every model row. The same on the first 150 users' 11.4k records for 600
    # steps: about 32 updates a user's row instead of 4. Does the personal input then count?
    "cpu-ratings-150": (("movielens_3",), (TAPPER, STEP_MATCHED),
                        {"movielens_3": {**SHORT_RATES, **CPU_RECIPE["movielens_3"],
                                         "stage2.steps": 600, "data.eval_max_examples": 150}}),
    "full": (("huffpost_2N", "huffpost_4", "movielens_3", "movielens_2M"),
             (TAPPER, LONG, STEP_MATCHED, PPLUG) + RAG_ZERO_SHOT + RAG_TRAINED_ALL
    + (Row("per-user LoRA", method="per_user_lora"),) + ABLATIONS, {}),  # the paper's recipe: epochs
}
LOWER_IS_BETTER = ("mae", "rmse", "gold_nll")


def task_config(kind: str, name: str, folder: str, recipe: dict, seed: int):
  import importlib
  from tapper_jax.training.defaults import set_field
  if kind == "offline":
    c = importlib.import_module("offline").get_config(name + (",tiny" if _TINY.value else ""))
  else:
    c = importlib.import_module(name).get_config("")
  c.data.folder = folder
  c.data.eval_split = _SPLIT.value
  c.seed = seed
  c.progress = False
  c.checkpoint_every = 1000
  c.eval_nll = True  # the gold's NLL per row: what the personal input moves, beside the answers
  for k, v in recipe.items():
    set_field(c, k, v)
  if _TINY.value:
    c.stage1.steps = c.stage2.steps = 2
    c.data.eval_max_examples = 12  # several users (the other-user control needs two)
  return c


def run_task(kind, name, folder, rows, recipe, seed, out) -> dict:
  """Stage 1 once, then every row; returns {row: scores} and the per-row prediction files."""
  from tapper_jax.training.defaults import set_field, with_method
  from tapper_jax.training.loop import train_and_evaluate
  # Runs of another split never resume from the test split's (or each other's) summaries.
  split = "" if _SPLIT.value == "test" else f"_{_SPLIT.value}"
  base = os.path.join(out, "runs", f"{name}{split}_seed{seed}")
  results, preds, minutes = {}, {}, {}

  def run(tag, c):
    wd = os.path.join(base, tag)
    path = os.path.join(wd, "summary.json")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        return json.load(f), wd
    return train_and_evaluate(c, wd), wd

  c = task_config(kind, name, folder, recipe, seed)
  c.stage = "1"
  t0 = time.time()
  s, wd = run("stage1", c)
  minutes["stage1"] = s.get("minutes", round((time.time() - t0) / 60, 2))
  results["non-personalized"] = s["eval"]["non-personalized"]
  preds.update(s["predictions"])
  backbone = os.path.join(wd, "backbone")
  for row in rows:
    c = task_config(kind, name, folder, recipe, seed)
    if row.method != "tapper":
      with_method(c, row.method)
    c.stage, c.name, c.eval_backbone = "2", row.name, False
    c.stage2.backbone = backbone
    c.eval_controls = row.controls
    for k, v in row.fields:
      set_field(c, k, v)
    tag = "".join(ch if ch.isalnum() else "_" for ch in row.name.lower())
    s, wd = run(tag, c)
    minutes[row.name] = s["minutes"]
    results.update({k: v for k, v in s["eval"].items() if isinstance(v, dict)})
    preds.update(s["predictions"])
    results.setdefault("_info", {})[row.name] = {
        k: s["stages"]["2"].get(k) for k in ("examples", "users", "steps", "lambda_t",
                                             "lambda_o", "history_slots")}
    results["_info"]["cold_start_eval_users"] = s.get("cold_start_eval_users")
  results.update(history_label_rows(task_config(kind, name, folder, recipe, seed), base, preds))
  results["_minutes"] = minutes
  results["_preds"] = preds
  return results


def history_label_rows(c, base: str, preds: dict) -> dict:
  """No-model controls that answer from the user's visible history alone. Label tasks: the
  user's most frequent label (ties: the newest), or the newest record's label; if these match
  a method, it has learned a per-user label prior and nothing more. Generation tasks: the
  output (e.g. headline) of the user's record most similar to the question (BM25, as RAG
  picks it), or of the newest record: what copying the user's own past text scores; and the
  first with another user's history (the other-user control's pairing): what of that is the
  user's own rather than the topic's."""
  import collections
  from tapper_jax import metrics
  from tapper_jax.data.retrieval import corpus_text
  from tapper_jax.fileio import slug, write_json
  from tapper_jax.methods.rag import bm25_top
  from tapper_jax.training.loop import other_user_example, plan
  p = plan(c, base)
  field = p.spec.target_field
  if not field:
    return {}
  generation = p.spec.kind == "generation"
  records = {(q.user_id, r.id): r for q in p.eval_qs + p.stage1_qs for r in q.profile}
  most = ("no model: user's most similar past " + field if generation
          else "no model: user's majority label")
  newest = f"no model: newest record's {field if generation else 'label'}"
  other = most.replace("user's", "another user's")
  mean = "no model: user's mean rating, rounded"  # rating tasks: the RMSE-optimal constant
  regression = p.spec.kind == "regression"
  rows = {most: [], newest: [], **({other: []} if generation else {}),
          **({mean: []} if regression else {})}

  def visible(e):
    return [records[(e.user, h)] for h in e.history if (e.user, h) in records]

  def similar(e, hist):
    top = bm25_top(e.query, [corpus_text(p.spec, r.fields) for r in hist], 1)
    return str(hist[top[0]].fields.get(field, "")) if top else ""

  pairs = other_user_example(p.evaluate) if generation else {}
  for e in p.evaluate:
    hist = visible(e)
    labels = [str(r.fields.get(field, "")) for r in hist]
    newest_first = labels[::-1]
    if generation:
      rows[most].append(similar(e, hist))
      rows[other].append(similar(e, visible(p.evaluate[pairs[e.user]])))
    else:
      counts = collections.Counter(labels)
      best = max(counts.values(), default=0)
      rows[most].append(next((x for x in newest_first if counts[x] == best), ""))
      if regression:
        values = [float(x) for x in labels if _is_number(x)]
        rows[mean].append(str(round(sum(values) / len(values))) if values else "")  # half to even
    rows[newest].append(newest_first[0] if newest_first else "")
  out = {}
  for name, answers in rows.items():
    path = os.path.join(base, "no_model", f"{c.data.eval_split}_{slug(name)}.json")
    write_json(path, metrics.leaderboard(p.spec.name, {e.id: a for e, a in
                                                       zip(p.evaluate, answers)}))
    preds[name] = path
    out[name] = metrics.score(p.spec.name, answers, [e.target for e in p.evaluate],
                              labels=p.spec.labels or None)
  return out


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _load_preds(path):
  from tapper_jax.data.lamp import read_outputs
  return read_outputs(path)[1]


def _load_nll(path) -> dict | None:
  """A row's per-question gold NLL (written beside its predictions), or None (no model)."""
  from tapper_jax.training.evaluation import nll_path
  if not os.path.isfile(nll_path(path)):
    return None
  with open(nll_path(path), encoding="utf-8") as f:
    return json.load(f)


def control_parents(names) -> dict[str, str]:
  """{control row: the row it controls} for the controls of rows other than TAP-PER (whose
  controls are paired with TAP-PER already): "RAG ..., another user's input" -> "RAG ..."."""
  return {f"{p}, {c}": p for p in names for c in CONTROLS.values()
          if p != "TAP-PER" and f"{p}, {c}" in names}


def _interval(spec, golds, preds, nll, a: str, b: str) -> dict:
  """95% paired intervals of row a minus row b: each metric, and the gold NLL where both have
  it; paired on the questions both answered (a per-user row may cover a subset)."""
  ci = paired_bootstrap(spec.name, spec.labels or None,
                        {i: g for i, g in golds.items() if i in preds[b]}, preds[a], preds[b],
                        _BOOT.value)
  if nll.get(a) is not None and nll.get(b) is not None:
    ci["gold_nll"] = paired_mean_interval(nll[a], nll[b], _BOOT.value)
  return ci


def _ci_text(ci) -> str:
  return "; ".join(f"{k} [{lo:+.3f}, {hi:+.3f}]" for k, (lo, hi) in ci.items()) if ci else ""


def report(all_results: dict, header: str) -> str:
  lines = [header, ""]
  for task, res in all_results.items():
    rows = {k: v for k, v in res["scores"].items() if not k.startswith("_")}
    keys = list(dict.fromkeys(k for v in rows.values() for k in v if not k.endswith("_mean")))
    best = {}
    for k in keys:
      vals = [v[k] for v in rows.values() if k in v]
      best[k] = min(vals) if k.lower() in LOWER_IS_BETTER else max(vals)
    own = res.get("control_intervals") or {}
    extra = " its model minus row, 95% CI |" if own else ""
    lines += [f"### {task} ({res['questions']} {_SPLIT.value} questions, "
              f"{res['users']} users)", "",
              "| row | " + " | ".join(keys) + " | TAP-PER minus row, 95% CI |" + extra,
              "|---|" + "---|" * (len(keys) + 1 + bool(own))]
    for name, v in rows.items():
      cells = [("" if k not in v else f"**{v[k]:.4f}**" if v[k] == best[k] else f"{v[k]:.4f}")
               for k in keys]
      line = f"| {name} | " + " | ".join(cells) + f" | {_ci_text(res['intervals'].get(name))} |"
      lines.append(line + (f" {_ci_text(own.get(name))} |" if own else ""))
    lines.append("")
  return "\n".join(lines)


def plot(all_results: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4.5),
                           squeeze=False)
  for ax, (task, res) in zip(axes[0], all_results.items()):
    rows = {k: v for k, v in res["scores"].items() if not k.startswith("_")}
    metric = next(iter(next(iter(rows.values()))))
    names = list(rows)
    ax.barh(range(len(names)), [rows[n][metric] for n in names],
            color=["tab:red" if n == "TAP-PER" else "tab:gray" for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"{task} ({_SPLIT.value}, {res['questions']} questions)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from tapper_jax.data import build_offline, lamp
  tasks, rows, recipes = BUDGETS[_BUDGET.value]
  if _BUDGET.value.startswith("dev-") and _SPLIT.value != "dev":
    raise app.UsageError(f"--budget={_BUDGET.value} chooses settings: run it with --split=dev")
  tasks = tuple(_TASKS.value) or tasks
  if _ROWS.value:
    rows = tuple(r for r in rows if r is TAPPER or any(k in r.name for k in _ROWS.value))
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  build_offline.build(_RAW.value, _OFFLINE.value, names=[t for t in tasks])
  jobs = [("offline", t, os.path.join(_OFFLINE.value, t)) for t in tasks]
  jobs += [("lamp", *spec.split(":", 1)) for spec in _LAMP.value]
  model = "tiny-random (smoke)" if _TINY.value else "SmolLM2-135M-Instruct"
  device = jax.devices()[0]
  kind = "" if device.device_kind.lower() == device.platform else f" {device.device_kind}"
  header = (f"Budget `{_BUDGET.value}`; {model} fp32 on {jax.device_count()} x "
            f"{device.platform}{kind} ({os.cpu_count()} cores); split "
            f"{_SPLIT.value}; seeds "
            f"{','.join(_SEEDS.value)}; rows {', '.join(r.name for r in rows)}; recipe "
            f"{json.dumps(recipes) if recipes else 'the paper (configs, in epochs)'}; greedy "
            "decoding; paired bootstrap " f"{_BOOT.value} resamples.")
  print(header, flush=True)
  t0 = time.time()
  all_results = {}
  for kind, name, folder in jobs:
    for seed in map(int, _SEEDS.value):
      key = f"{name}" + (f" (seed {seed})" if len(_SEEDS.value) > 1 else "")
      res = run_task(kind, name, folder, rows, recipes.get(name, {}), seed, out)
      spec = lamp.task_of_folder(folder)
      qs, _ = lamp.load_split(folder, spec, _SPLIT.value)
      limit = task_config(kind, name, folder, recipes.get(name, {}), seed).data.eval_max_examples
      if limit:  # the questions the rows answered (tiny runs and user-subset budgets)
        qs = qs[:limit]
      golds = {q.id: q.gold for q in qs}
      preds = {k: _load_preds(p) for k, p in res["_preds"].items()}
      nll = {k: _load_nll(p) for k, p in res["_preds"].items()}
      pair = lambda a, b: _interval(spec, golds, preds, nll, a, b)  # noqa: E731
      intervals = {k: pair("TAP-PER", k) for k in preds if k != "TAP-PER"}
      # Another row's controls ("RAG ..., another user's input"), against their own model.
      own = {k: pair(parent, k) for k, parent in control_parents(preds).items()}
      all_results[key] = {"scores": res, "intervals": intervals, "control_intervals": own,
                          "questions": len(qs), "users": len({q.user_id for q in qs}),
                          "minutes": res["_minutes"]}
      print(report({key: all_results[key]}, ""), flush=True)
  reused = sum(v for r in all_results.values() for v in r["minutes"].values())
  header += (f" Wall time {round((time.time() - t0) / 60, 1)} min for this invocation; the "
             f"stage runs in the table took {round(reused, 1)} min when they ran.")
  text = report(all_results, header)
  stem = os.path.join(out, f"quality_{_BUDGET.value}")
  keep_previous(stem)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump({"header": header, "results": all_results}, f, indent=2)
  plot(all_results, stem + ".png")
  print(text)


if __name__ == "__main__":
  app.run(main)
