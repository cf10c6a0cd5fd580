"""Leaderboard predictions for any LaMP questions file from a trained workdir.

The run's config comes from WORKDIR/summary.json, the backbone from WORKDIR/backbone (or the
config's stage-2 backbone), the trained state from the newest stage-2 checkpoint. Users are
mixed freely inside each batch: every row carries its own prefix inputs (its P_u row, its own
history). A user without a trained row runs cold (P_u = 0, history alone) and is counted.
The questions need no golds (the official test split has none); where an outputs file sits
beside them ({split}_outputs.json), the predictions are also scored.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
from absl import logging

from tapper_jax import metrics


def _config(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; is {workdir} a finished training workdir?")
  with open(path, encoding="utf-8") as f:
    summary = json.load(f)
  if "config" not in summary or "2" not in summary.get("stages", {}):
    raise ValueError(f"{path}: no stage-2 run recorded (field 'stages.2'); train stage 2 first")
  return ml_collections.ConfigDict(summary["config"]), summary


@dataclasses.dataclass
class _Plan:  # what a method's `fields` reads of a run's plan
  spec: object
  stage1_qs: list
  eval_qs: list


def predict_file(workdir: str, questions: str, out: str, *, batch_size: int = 0,
                 progress: bool = True) -> dict:
  """Writes `out` (leaderboard format) for every question in `questions`; returns a summary:
  questions, users, cold users, the output path and, where golds exist, the scores."""
  from tapper_jax import methods
  from tapper_jax.data import lamp
  from tapper_jax.data.tasks import get_task
  from tapper_jax.fileio import write_json
  from tapper_jax.tapper.model import PersonalizedLM
  from tapper_jax.training import evaluation, setup
  from tapper_jax.training import examples as ex
  from tapper_jax.training.checkpoint import Checkpoints
  from tapper_jax.training.loop import StageRun, _backbone, prompt_format

  if os.path.exists(out):
    raise FileExistsError(f"{out}: exists; refusing to overwrite it")
  workdir = os.path.abspath(workdir)
  config, summary = _config(workdir)
  config.progress = progress
  if batch_size:
    config.eval_batch_size = batch_size
  method = methods.get(config)
  if getattr(method, "per_user", False):
    raise NotImplementedError("predict for per-user LoRA runs: load WORKDIR/adapters/USER with "
                              "models.lora.load_peft_adapter (a CLI is not there yet)")
  spec = get_task(config.task)
  if summary.get("labels"):  # the label set the run trained with (offline/synthetic: its own)
    spec = spec.with_labels(summary["labels"])
  report = lamp.Report(questions)
  qs = lamp.read_questions(questions, spec, report=report)
  golds_path = questions.replace("_questions.json", "_outputs.json")
  if golds_path != questions and os.path.isfile(golds_path):
    golds = lamp.read_outputs(golds_path)[1]
    for q in qs:
      q.gold = golds.get(q.id)
  examples = ex.question_examples(spec, qs)
  llm, tok, _ = _backbone(config, workdir)
  prompts = prompt_format(config, tok)
  examples = method.prompts(examples, _Plan(spec, [], qs), tok, prompts)
  mesh = setup.make_mesh(config)
  s2 = config.stage2
  id_map: dict = {}
  model, fields = PersonalizedLM(llm, None), None
  if s2.prefix or s2.bridge_lora:
    ckpt = Checkpoints(os.path.join(workdir, "stage2", "checkpoints"), keep=config.checkpoint_keep)
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}/stage2/checkpoints: no checkpoint to predict with")
    saved = _saved_users(ckpt, step)
    run = StageRun(2, llm, config, mesh, setup.table_rows(len(saved), mesh, config), 1)
    state, id_map, _ = ckpt.restore(step, run.abstract, run.state_sh)
    ckpt.close()
    model = run.model(state)
    fields = method.fields(examples, _Plan(spec, [], qs), tok, llm, id_map)
  with run_rules(mesh, config):
    preds = evaluation.predict(model, examples, prompts, config,
                               None if fields is None else fields.fields)
  write_json(out, metrics.leaderboard(spec.name, {e.id: p for e, p in zip(examples, preds)}))
  users = sorted({q.user_id for q in qs})
  cold = [u for u in users if u not in id_map] if id_map else []
  result = {"questions": len(qs), "users": len(users), "cold_users": len(cold), "out": out,
            "skipped": dict(report.counts)}
  if id_map and cold:
    logging.warning("%d of %d users have no trained row: they run cold (P_u = 0, history alone)",
                    len(cold), len(users))
  scored = [(e, p) for e, p in zip(examples, preds) if e.target]
  if scored:
    result["scores"] = evaluation.score(spec, [e for e, _ in scored], [p for _, p in scored])
  return result


def _saved_users(ckpt, step) -> dict:
  import orbax.checkpoint as ocp
  return dict(ckpt.manager.restore(step, args=ocp.args.Composite(
      users=ocp.args.JsonRestore()))["users"])


def run_rules(mesh, config):
  import contextlib
  import jax
  from tapper_jax.models.partitioning import use_rules
  stack = contextlib.ExitStack()
  stack.enter_context(use_rules(mesh, config.mesh.rules))
  stack.enter_context(jax.set_mesh(mesh))
  return stack
