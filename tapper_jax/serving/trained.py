"""A finished training workdir, loaded for use: its config, task spec, backbone, tokenizer,
prompt format, method and the trained stage-2 model (newest checkpoint) with its user map."""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections


@dataclasses.dataclass
class Plan:  # what a method's `prompts` / `fields` read of a run's plan
  spec: object
  stage1_qs: list
  eval_qs: list


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  summary: dict
  spec: object  # data.tasks.TaskSpec, with the run's label set
  llm: object
  tokenizer: object
  prompts: object  # data.prompts.PromptFormat
  method: object
  model: object  # tapper.model.PersonalizedLM (the backbone alone for zero-shot methods)
  id_map: dict  # user id -> table row ({} without a table)
  mesh: object

  def rules(self):
    """The mesh and sharding rules the model runs under (a context manager)."""
    import contextlib

    import jax
    from tapper_jax.models.partitioning import use_rules
    stack = contextlib.ExitStack()
    stack.enter_context(use_rules(self.mesh, self.config.mesh.rules))
    stack.enter_context(jax.set_mesh(self.mesh))
    return stack


def read_summary(workdir: str) -> dict:
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; is {workdir} a finished training workdir?")
  with open(path, encoding="utf-8") as f:
    summary = json.load(f)
  if "config" not in summary or "2" not in summary.get("stages", {}):
    raise ValueError(f"{path}: no stage-2 run recorded (field 'stages.2'); train stage 2 first")
  return summary


def _tuples(x):
  return tuple(_tuples(y) for y in x) if isinstance(x, (list, tuple)) else x


def run_config(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config on top of today's defaults: a workdir trained before a field existed
  gets that field's default (the behaviour it was trained with), not a KeyError."""
  from tapper_jax.training.defaults import base_config
  c = base_config(saved.get("task", "LaMP_2M"))

  def merge(node, values):
    for k, v in values.items():
      if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
        merge(node[k], v)
      elif k in node and isinstance(node[k], tuple) and isinstance(v, list):
        node[k] = _tuples(v)  # JSON turned the config's tuples into lists
      else:
        with node.ignore_type():
          node[k] = v
  merge(c, saved)
  return c


def load(workdir: str, *, progress: bool = True) -> Trained:
  from flax import nnx  # noqa: F401  (models need it imported)
  import orbax.checkpoint as ocp
  from tapper_jax import methods
  from tapper_jax.data.tasks import get_task
  from tapper_jax.tapper.model import PersonalizedLM
  from tapper_jax.training import setup
  from tapper_jax.training.checkpoint import Checkpoints
  from tapper_jax.training.loop import StageRun, _backbone, prompt_format
  workdir = os.path.abspath(workdir)
  summary = read_summary(workdir)
  config = run_config(summary["config"])
  config.progress = progress
  method = methods.get(config)
  if getattr(method, "per_user", False):
    raise NotImplementedError(f"{workdir}: a per-user LoRA run; load WORKDIR/adapters/USER "
                              "with models.lora.load_peft_adapter")
  spec = get_task(config.task)
  if summary.get("labels"):  # the label set the run trained with (offline/synthetic: its own)
    spec = spec.with_labels(summary["labels"])
  llm, tok, _ = _backbone(config, workdir)
  mesh = setup.make_mesh(config)
  model, id_map = PersonalizedLM(llm, None), {}
  if config.stage2.prefix or config.stage2.bridge_lora:
    ckpt = Checkpoints(os.path.join(workdir, "stage2", "checkpoints"), keep=config.checkpoint_keep)
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}/stage2/checkpoints: no checkpoint")
    saved = dict(ckpt.manager.restore(step, args=ocp.args.Composite(
        users=ocp.args.JsonRestore()))["users"])
    # Serving holds the table on the mesh, as the run's evaluation did, whatever it trained with
    # (a host-memory table's checkpoint has the device layout).
    config.stage2.table_memory = "device"
    run = StageRun(2, llm, config, mesh, setup.table_rows(len(saved), mesh, config), 1)
    params, table, id_map = ckpt.restore_params(step, run.abstract, run.state_sh)
    ckpt.close()
    model = run.model({"params": params, "table": table})
  return Trained(config, summary, spec, llm, tok, prompt_format(config, tok), method, model,
                 id_map, mesh)
