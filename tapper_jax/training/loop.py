"""The two-stage TAP-PER run: `train_and_evaluate(config, workdir)`.

Stage 1 trains the task LoRA on query/response pairs pooled over users, merges it, and saves
the merged backbone once to workdir/backbone. Stage 2 loads that backbone frozen and trains the
TAP-PER module (user prefix table, temporal attention, projection) with the bridge LoRA. Both
stages checkpoint with Orbax and resume exactly where they stopped. The end: greedy evaluation
of the non-personalized backbone and of TAP-PER with the official metrics, leaderboard files in
workdir/predictions and workdir/summary.json.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import logging
from flax import nnx

from tapper_jax import methods, metrics, models
from tapper_jax.fileio import slug, write_json
from tapper_jax.models import registry
from tapper_jax.models.llama import LlamaForCausalLM
from tapper_jax.models.lora import merge_lora
from tapper_jax.models.partitioning import use_rules
from tapper_jax.tapper.model import PersonalizedLM
from tapper_jax.data import lamp
from tapper_jax.data.prompts import PromptFormat
from tapper_jax.training import distributed, evaluation, faults, setup, steps
from tapper_jax.training import examples as ex
from tapper_jax.training.defaults import resolve_steps
from tapper_jax.training.checkpoint import Checkpoints
from tapper_jax.training.host_table import HostTable
from tapper_jax.training.logger import Logger, bars_and_logs

# Batch fields the step never sees as arrays (`micro`, the micro-batch widths, reaches it as
# static Python ints).
HOST_ONLY = ("index", "loss_mask", "shortened", "target_cut", "micro")
TABLE_ENTRIES = ("table", "sparse")  # the state entries a host table keeps off the device
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def _device_part(state: dict) -> dict:
  """The train state without the entries a host table holds."""
  return {k: v for k, v in state.items() if k not in TABLE_ENTRIES}


class StageRun:
  """One stage's model, state and shardings on the mesh; `fit` trains it, resuming if it can."""

  def __init__(self, stage: int, llm: LlamaForCausalLM, config, mesh, num_rows: int,
               num_steps: int, init_values: dict | None = None):
    """init_values: a fresh state's params named by path ("tapper/attention/z_center") set to
    these values (a method's data-dependent init, `Method.init_values`); a restore ignores it."""
    self.init_values = dict(init_values or {})
    self.stage, self.config, self.mesh, self.steps = stage, config, mesh, num_steps
    self.cfg = config.stage1 if stage == 1 else config.stage2
    self.user_dropout = float(self.cfg.get("user_dropout", 0.0)) if stage == 2 else 0.0
    self.tx, self.lr = steps.optimizer(self.cfg, num_steps)
    self.sparse = steps.sparse_table_fn(self.cfg, num_steps) if stage == 2 else None
    self.key = jax.random.PRNGKey(config.seed + 1000 * stage)
    self.graphdef, init = steps.init_state_fn(llm.config, config, stage, num_rows, self.tx,
                                              self.sparse)
    whole = jax.eval_shape(init, self.key)
    # A host table (training/host_table.py) leaves the table and its row state out of the device
    # state; under jit the table `init` draws is then dead code. A method without a table has
    # nothing to hold there.
    self.on_host = (stage == 2 and steps.on_host(self.cfg)
                    and bool(jax.tree.leaves(whole["table"])))
    self.table = None  # the HostTable of a host-memory run
    if self.on_host:  # the table's layout (and sharding, for evaluation) as it would be on device
      self.table_abstract = {k: whole[k] for k in TABLE_ENTRIES}
      self.table_sh = setup.shardings(whole["table"], mesh, config)
      self.init = lambda key: _device_part(init(key))
      self.abstract = _device_part(whole)
    else:
      self.init, self.abstract = init, whole
    self.state_sh = setup.shardings(self.abstract, mesh, config)
    frozen = nnx.state(PersonalizedLM(llm, None))
    self.frozen_sh = setup.shardings(frozen, mesh, config)
    self.frozen = jax.device_put(frozen, self.frozen_sh)
    self._steps = {}  # (the batch's field names, micro-batch widths) -> its jitted step

  def rules(self):
    return use_rules(self.mesh, self.config.mesh.rules)

  def fresh_state(self):
    """A fresh device state (and, for a host-memory table, a fresh HostTable in self.table)."""
    if self.on_host:
      self.table = HostTable.fresh(self.table_abstract, self.config.seed + 1000 * self.stage)

    def init(key, values):
      state = self.init(key)
      return {**state, "params": steps.with_values(state["params"], values)}

    with self.rules(), jax.set_mesh(self.mesh):
      return jax.jit(init, out_shardings=self.state_sh)(self.key, self.init_values)

  def step_fn(self, batch, widths: tuple[int, ...] | None = None):
    """The jitted step for batches with `batch`'s fields, run as micro-batches of `widths`
    (None: whole): (state, frozen, batch) -> (state, metrics); with a host table (state,
    frozen, batch, rows) -> (state, metrics, rows)."""
    fields = (tuple(sorted(batch)), widths)
    if fields not in self._steps:
      micro = None if widths is None else (widths, setup.batch_shards(self.mesh, self.config))
      batch_sh = {k: setup.batch_sharding(self.mesh, self.config, np.ndim(v))
                  for k, v in batch.items()}
      rep = setup.replicated(self.mesh)
      if self.on_host:
        fn = steps.host_table_step_fn(self.graphdef, self.tx, self.lr, self.sparse,
                                      jax.tree.structure(self.table_abstract["table"]),
                                      self.config.model.remat, self.user_dropout, micro)
        self._steps[fields] = jax.jit(
            fn, in_shardings=(self.state_sh, self.frozen_sh, batch_sh, rep),
            out_shardings=(self.state_sh, rep, rep), donate_argnums=0)
      else:
        self._steps[fields] = jax.jit(
            steps.train_step_fn(self.graphdef, self.tx, self.lr, self.config.model.remat,
                                self.sparse, self.user_dropout, micro),
            in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
            out_shardings=(self.state_sh, rep), donate_argnums=0)
    return self._steps[fields]

  def micro_widths(self) -> list[list[int]]:
    """Each compiled step's micro-batch widths, sorted ([]: whole batches)."""
    return sorted(list(w or ()) for _, w in self._steps)

  def train_step(self, state, host: dict, step: int):
    """One step on this process's rows `host` of the global batch -> (state, metrics). A host
    table gathers the batch's rows before and writes them back after (if the step was finite)."""
    fields = {k: v for k, v in host.items() if k not in HOST_ONLY}
    widths = tuple(int(w) for w in host["micro"]) if "micro" in host else None
    if not self.on_host:
      batch = setup.put_batch(fields, self.mesh, self.config, global_rows=self.cfg.batch_size)
      return self.step_fn(batch, widths)(state, self.frozen, batch)
    local = np.asarray(fields["user_row"])
    every = local if jax.process_count() == 1 else \
        np.asarray(multihost_utils.process_allgather(local)).reshape(-1)
    rows, uniq, fields["user_row"] = self.table.gather(local, every)
    rows = jax.device_put(rows, setup.replicated(self.mesh))
    batch = setup.put_batch(fields, self.mesh, self.config, global_rows=self.cfg.batch_size)
    state, metrics, out = self.step_fn(batch, widths)(state, self.frozen, batch, rows)
    if bool(jax.device_get(metrics["finite"])):
      self.table.scatter(uniq, jax.device_get(out), step)
    return state, metrics

  def with_table(self, state) -> dict:
    """The state with its table: a host table's placed on the mesh (sharded over `users`, as on
    device; its moments stay on the host)."""
    if not self.on_host:
      return state
    return {**state, "table": jax.device_put(self.table.state()["table"], self.table_sh)}

  def model(self, state) -> PersonalizedLM:
    return nnx.merge(self.graphdef, state["table"], state["params"], self.frozen)

  def fit(self, dataset, workdir: str, id_map: dict[str, int], *, stop_after: int | None = None,
          example_ids=None):
    """Trains to `cfg.steps` (or `stop_after` steps, to simulate a preemption); returns state.

    SIGTERM (a preemption notice) saves a checkpoint after the current step and raises
    `Preempted`. A non-finite loss or gradient raises `NonFiniteError` naming the step and the
    batch's example ids (`example_ids[i]` for batch index i), with a snapshot in
    WORKDIR/debug/; the state never takes the bad update and no checkpoint holds it."""
    config = self.config
    ckpt = Checkpoints(os.path.join(workdir, f"stage{self.stage}", "checkpoints"),
                       keep=config.checkpoint_keep)
    it = iter(dataset)
    latest = ckpt.latest_step()
    if latest is not None:
      target = HostTable.empty(self.table_abstract).state() if self.on_host else None
      state, saved_map, data_state = ckpt.restore(latest, self.abstract, self.state_sh,
                                                  host=target)
      if self.on_host:
        self.table = HostTable.from_state(self.table_abstract, state)
        state = _device_part(state)
      if saved_map != id_map:
        raise ValueError(f"{workdir}: checkpoint {latest} was trained for other users "
                         "(its user-id map differs); use a new workdir")
      it.set_state(data_state)
      logging.info("stage %d: resumed from step %d", self.stage, latest)
    else:
      state = self.fresh_state()
    start = int(jax.device_get(state["step"]))
    end = self.steps if stop_after is None else min(self.steps, stop_after)
    prefix_len = config.stage2.prefix_len if self.stage == 2 and config.stage2.prefix else 0
    log = Logger(os.path.join(workdir, "tensorboard", f"stage{self.stage}"),
                 total=self.steps, initial=start, desc=f"stage {self.stage}",
                 enabled=config.progress and distributed.is_main(),
                 jsonl=os.path.join(workdir, "metrics.jsonl"), writes=distributed.is_main())
    with self.rules(), jax.set_mesh(self.mesh), bars_and_logs(config.progress), \
        faults.sigterm_requests() as preemption:
      for step in range(start, end):
        host = next(it)  # this process's rows of the global batch
        state, step_metrics = self.train_step(state, host, step)
        if not bool(jax.device_get(step_metrics.pop("finite"))):
          ckpt.wait()
          ckpt.close()
          log.close()
          faults.non_finite(step + 1, host, step_metrics, workdir, self.stage, example_ids)
        rows = len(host["attention_mask"])  # of cfg.batch_size: scaled to the global batch
        tokens = (int(host["attention_mask"].sum()) + rows * prefix_len) * self.cfg.batch_size // rows
        last = step + 1 == end
        log.step(step + 1, tokens, step_metrics if ((step + 1) % config.log_every == 0 or last)
                 else None)
        if (step + 1) % config.checkpoint_every == 0 or last or preemption.requested:
          ckpt.save(step + 1, {**state, **self.table.state()} if self.on_host else state,
                    id_map, it.get_state())
          if self.on_host:  # the next step writes the host table in place: let the save read it
            ckpt.wait()
        if preemption.requested and not last:
          ckpt.wait()
          ckpt.close()
          log.close()
          raise faults.Preempted(f"stage {self.stage}: SIGTERM; checkpoint saved at step "
                                 f"{step + 1} in {workdir} (rerun the same command to resume)")
    ckpt.wait()
    ckpt.close()
    log.close()
    self.logged = log.logged
    return self.with_table(state)


def _held(config) -> dict:
  """How the backbone is held and computed: models.load's keywords, from config.model."""
  m = config.model
  return dict(param_dtype=m.param_dtype, dtype=m.dtype, attention=m.attention,
              scan_unroll=m.scan_unroll)


def _backbone(config, workdir: str):
  """(llm, tokenizer, folder) to run stage 2 on: the saved stage-1 backbone if there is one."""
  folder = config.stage2.backbone or os.path.join(workdir, "backbone")
  if os.path.isfile(os.path.join(folder, "config.json")):
    return (models.load_pretrained(folder, **_held(config)),
            models.Tokenizer.from_pretrained(folder), folder)
  logging.warning("no stage-1 backbone in %s: stage 2 runs on %s without a task LoRA", folder,
                  config.model.name)
  llm, tok = models.load(config.model.name, seed=config.seed, **_held(config))
  return llm, tok, None


def _save_backbone(llm, source_folder: str, folder: str) -> None:
  extra = {}
  for name in TOKENIZER_FILES:
    p = os.path.join(source_folder, name)
    if os.path.isfile(p):
      with open(p, encoding="utf-8") as f:
        extra[name] = f.read()
  models.save_pretrained(llm, folder, extra_files=extra)


def prompt_format(config, tokenizer) -> PromptFormat:
  chat = {"on": True, "off": False, "auto": bool(tokenizer.chat_template)}[config.chat_template]
  return PromptFormat(tokenizer, config.max_prompt_tokens, chat=chat)


@dataclasses.dataclass
class Plan:
  """What a run trains and evaluates on, decided from the config and the files alone."""
  spec: object  # data.tasks.TaskSpec
  folder: str
  stage1_qs: list  # the stage-1 split's questions
  eval_qs: list  # the evaluated questions
  stage1: list  # stage-1 examples (pooled question/gold pairs)
  stage2: list  # stage-2 examples (the evaluated users' own records, ...)
  evaluate: list  # evaluation examples
  users: list  # the users with a P_u row (sorted)
  skips: object  # lamp.Report of records that make no example
  method: methods.Method  # the configured stage-2 method


def plan(config, workdir: str) -> Plan:
  """Reads the splits and builds every example set of the run (no model needed)."""
  spec, folder = ex.load_task(config, workdir)
  stage1_qs, report = ex.load_questions(config, spec, folder, config.data.stage1_split)
  logging.info("%s", report.summary())
  eval_qs = []
  if config.data.eval_split:
    eval_qs, report = ex.load_questions(config, spec, folder, config.data.eval_split)
    logging.info("%s", report.summary())
    if config.data.eval_max_examples:
      eval_qs = eval_qs[: config.data.eval_max_examples]
  method = methods.get(config)
  skips = lamp.Report("stage-2 examples")
  stage2 = method.examples(spec, eval_qs, stage1_qs, skips)
  held = ex.held_out_users(eval_qs, config.stage2.get("holdout_users", 0))
  if held:  # left out of stage 2 entirely: cold at evaluation (the online-update experiment)
    stage2 = [e for e in stage2 if e.user not in held]
    skips.note("held_out_users", len(held))
  users = method.users(stage2)
  return Plan(spec, folder, stage1_qs, eval_qs, ex.question_examples(spec, stage1_qs), stage2,
              ex.question_examples(spec, eval_qs), users, skips, method)


def train_and_evaluate(config, workdir: str, *, stop_after: int | None = None) -> dict:
  """Runs the configured stages and the final evaluation; returns the summary (also written)."""
  mesh_shape = setup.validate(config)
  mesh = setup.make_mesh(config)
  workdir = os.path.abspath(workdir)  # Orbax refuses relative checkpoint paths
  faults.check_workdir(workdir, faults.MIN_FREE_BYTES)
  t_start = time.time()
  p = plan(config, workdir)
  spec, folder, stage1_qs, eval_qs = p.spec, p.folder, p.stage1_qs, p.eval_qs
  summary = {"task": spec.name, "labels": list(spec.labels), "data": folder, "mesh": dict(zip(config.mesh.axes, mesh_shape)),
             "devices": f"{jax.device_count()} x {jax.devices()[0].platform}", "stages": {},
             "config": config.to_dict()}
  stage = str(config.stage)
  backbone_dir = os.path.join(workdir, "backbone")

  if stage in ("1", "both"):
    if os.path.isfile(os.path.join(backbone_dir, "config.json")):
      logging.info("stage 1: merged backbone already in %s; not retrained", backbone_dir)
    else:
      t0 = time.time()
      llm, tok = models.load(config.model.name, seed=config.seed, **_held(config))
      prompts = prompt_format(config, tok)
      examples = p.stage1
      n_steps = resolve_steps(config.stage1, len(examples))
      run = StageRun(1, llm, config, mesh, num_rows=1, num_steps=n_steps)
      ds = ex.train_dataset(examples, prompts, config, config.stage1, seed=config.seed,
                            mesh=mesh)
      state = run.fit(ds, workdir, {}, stop_after=stop_after, example_ids=[e.id for e in examples])
      if int(jax.device_get(state["step"])) < n_steps:
        return {"stopped_after": stop_after, "stage": 1}
      model = run.model(jax.device_get(state))
      merge_lora(model.llm)
      source = registry.resolve(models.TINY_RANDOM_BASE if config.model.name == "tiny-random"
                                else config.model.name)
      with distributed.main_first("backbone"):
        if distributed.is_main():
          _save_backbone(model.llm, source, backbone_dir)
      summary["stages"]["1"] = {
          "split": config.data.stage1_split, "examples": len(examples), "steps": n_steps,
          "budget": ex.budget_report(examples, prompts, config.max_target_tokens),
          "seconds": round(time.time() - t0, 1), "log": run.logged}

  results, files = {}, {}
  run = state = ev = ev_fields = None
  if stage in ("2", "both"):
    t0 = time.time()
    llm, tok, _ = _backbone(config, workdir)
    prompts = prompt_format(config, tok)
    s2 = config.stage2
    examples, users, skips = p.stage2, p.users, p.skips
    trains = s2.prefix or s2.bridge_lora  # else zero-shot: the backbone on the method's prompts
    if trains:
      examples = p.method.prompts(examples, p, tok, prompts)
    ev = p.method.prompts(p.evaluate, p, tok, prompts)
    if not examples:
      raise ValueError(f"stage 2 has no training examples ({s2.examples} of "
                       f"{len(eval_qs)} evaluated questions); {skips.summary()}")
    logging.info("%s", skips.summary())
    id_map = {u: i for i, u in enumerate(users)}
    num_rows = setup.table_rows(len(users), mesh, config)
    n_steps = resolve_steps(s2, len(examples)) if trains else 0
    fields = p.method.fields(examples, p, tok, llm, id_map, slots_from=[ev])
    ev_fields = p.method.fields(ev, p, tok, llm, id_map, slots_from=[examples])
    run, state = None, None
    if getattr(p.method, "per_user", False):  # one LoRA per user: its own loop and evaluation
      return _per_user(config, workdir, p, llm, examples, ev, prompts, mesh, summary, t0, t_start)
    if trains:
      run = StageRun(2, llm, config, mesh, num_rows, n_steps, p.method.init_values())
      ds = ex.train_dataset(examples, prompts, config, s2, seed=config.seed, history=fields,
                            mesh=mesh)
      state = run.fit(ds, workdir, id_map, stop_after=stop_after,
                      example_ids=[e.id for e in examples])
      if int(jax.device_get(state["step"])) < n_steps:
        return {"stopped_after": stop_after, "stage": 2}
    else:
      logging.info("stage 2 trains nothing (prefix=False, bridge_lora=False): %s is evaluated "
                   "zero-shot on the stage-1 backbone", config.name)
    eval_users = sorted({q.user_id for q in eval_qs})
    cold = [u for u in eval_users if u not in id_map] if users else []
    if eval_users and len(cold) * 2 > len(eval_users):
      logging.warning("MOST EVALUATED USERS ARE COLD STARTS: %d of %d have no P_u row (their "
                      "P_u is 0). Check data.eval_split and stage2.examples.", len(cold),
                      len(eval_users))
    info = {"examples": len(examples), "kinds": list(s2.examples), "skipped": dict(skips.counts),
            "users": len(users), "table_rows": num_rows, "steps": n_steps,
            "budget": ex.budget_report(examples if trains else ev, prompts,
                                       config.max_target_tokens),
            "seconds": round(time.time() - t0, 1), "log": run.logged if run else []}
    if run is not None:  # the micro-batch widths each compiled step ran ([]: whole batches)
      info["micro_widths"] = run.micro_widths()
    if state is not None and jax.tree.leaves(state["table"]):
      info["table_sharding"] = str(jax.tree.leaves(state["table"])[0].sharding.spec)
    if fields is not None:
      info.update(bank_records=int(fields.bank.z.shape[0]), history_slots=fields.slots)
      attn = state["params"].get("tapper", {}).get("attention") if state is not None else None
      if attn is not None:
        info.update(lambda_t=float(attn["lambda_t"][...]), lambda_o=float(attn["lambda_o"][...]))
    summary["stages"]["2"] = info
    if eval_qs and config.evaluate:
      summary["cold_start_eval_users"] = len(cold)
      summary["eval_users"] = len(eval_users)
      if config.eval_backbone:
        _evaluate(results, files, "non-personalized", spec, p.evaluate,
                  PersonalizedLM(llm, None), prompts, config, None, workdir)
      model = run.model(state) if run else PersonalizedLM(llm, None)
      _evaluate(results, files, config.name, spec, ev, model, prompts, config,
                None if ev_fields is None else ev_fields.fields, workdir)
      for control in config.eval_controls:
        name, file = f"{config.name}, {setup.CONTROLS[control]}", f"{slug(config.name)}_{control}"
        if ev_fields is not None:
          _evaluate(results, files, name, spec, ev, model, prompts, config,
                    _control_fields(control, ev, ev_fields), workdir, file=file)
        elif control in p.method.text_controls:
          # The method reads the history as text: its prompts rebuilt from the control's
          # examples (the user's id restored: the question is still this user's).
          swapped = p.method.prompts(control_examples(control, p.evaluate), p, tok, prompts)
          ctl = [dataclasses.replace(c, user=e.user) for c, e in zip(swapped, p.evaluate)]
          _evaluate(results, files, name, spec, ctl, model, prompts, config, None, workdir,
                    file=file)
        else:
          logging.warning("%s: control %r does not apply to method %s; skipped", config.name,
                          control, p.method.name)
  elif eval_qs and config.evaluate:
    llm, tok, _ = _backbone(config, workdir)
    _evaluate(results, files, "non-personalized", spec, p.evaluate, PersonalizedLM(llm, None),
              prompt_format(config, tok), config, None, workdir)
  summary["eval"] = {"split": config.data.eval_split, "questions": len(eval_qs), **results}
  summary["predictions"] = files  # row name -> its leaderboard file
  summary["minutes"] = round((time.time() - t_start) / 60, 2)
  plot_args = {}
  if config.plots and stage in ("2", "both") and run is not None and ev_fields is not None:
    # Gathered whole by every process (a collective), so that process 0 alone can plot.
    model = run.model(state)
    plot_args = dict(model=evaluation.host_local(model), examples=ev, fields=ev_fields)
  if config.plots and distributed.is_main():
    from tapper_jax.training import plots
    summary["plots"] = plots.write_run_plots(workdir, summary, **plot_args)
  if distributed.is_main():
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _control_fields(control: str, ev, fields: "ex.HistoryFields"):
  """Example i's fields under a control: no personal input (P_u = 0 and an empty history), or
  the row and visible history of another evaluated user (users shifted by one, in sorted order),
  or the user's own history with no row (P_u = 0: a cold start, what P_q alone carries)."""
  if control == "cold":
    return lambda i: fields.fields(i, user="")
  if control == "no_personal":
    empty = dataclasses.replace(fields, examples=control_examples("no_personal", ev))
    return lambda i: empty.fields(i, user="")
  other = other_user_example(ev)
  return lambda i: fields.fields(i, user=ev[other[ev[i].user]].user,
                                 history_of=other[ev[i].user])


def control_examples(control: str, ev) -> list:
  """The examples under a control, as a method that reads the history as text sees them: no
  visible history ("no_personal"), or the user and visible history of another evaluated user
  (the pairing of `other_user_example`; the question, its day and its id unchanged)."""
  if control == "no_personal":
    return [dataclasses.replace(e, history=()) for e in ev]
  if control == "other_user":
    other = other_user_example(ev)
    return [dataclasses.replace(e, user=ev[other[e.user]].user, history=ev[other[e.user]].history)
            for e in ev]
  raise ValueError(f"control {control!r} has no text form (it needs a user row)")


def other_user_example(ev) -> dict[str, int]:
  """The other-user control's pairing: each evaluated user -> the index in `ev` of the first
  question of the next user in sorted order (whose row and visible history stand in)."""
  users = sorted({e.user for e in ev})
  if len(users) < 2:
    raise ValueError("the other-user control needs at least two evaluated users")
  first = {}
  for j, e in enumerate(ev):
    first.setdefault(e.user, j)
  return {u: first[users[(k + 1) % len(users)]] for k, u in enumerate(users)}


def _per_user(config, workdir, p, llm, examples, ev, prompts, mesh, summary, t0, t_start):
  """Stage 2 of a per-user method (OPPU-style LoRA): a LoRA per user, each user's questions
  answered with their own; the non-personalized backbone on the same questions beside it."""
  from tapper_jax.training import per_user
  users = p.method.lora_users(examples)
  run = StageRun(2, llm, config, mesh, num_rows=1, num_steps=config.per_user.steps)
  base = config.stage2.backbone or os.path.join(workdir, "backbone")
  preds, counts, nll = per_user.train_and_predict(run, config, workdir, users, examples, ev,
                                                  prompts, base_model=base)
  asked = [e for e in ev if e.user in counts]
  summary["stages"]["2"] = {"examples": sum(counts.values()), "kinds": list(config.stage2.examples),
                            "users": len(users), "steps_per_user": config.per_user.steps,
                            "examples_per_user": counts, "evaluated_questions": len(asked),
                            "seconds": round(time.time() - t0, 1)}
  results, files = {}, {}
  if config.evaluate and asked:
    if config.eval_backbone:
      _evaluate(results, files, "non-personalized", p.spec, asked, PersonalizedLM(llm, None),
                prompts, config, None, workdir)
    _record(results, files, config.name, p.spec, asked, [preds[e.id] for e in asked], config,
            workdir)
    if nll:
      _record_nll(results, files, config.name, asked, [nll[e.id] for e in asked])
  summary["eval"] = {"split": config.data.eval_split, "questions": len(asked), **results}
  summary["predictions"] = files
  summary["minutes"] = round((time.time() - t_start) / 60, 2)
  if distributed.is_main():
    write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _evaluate(results, files, name, spec, examples, model, prompts, config, fields, workdir, *,
              file: str | None = None) -> None:
  """Scores row `name` into results[name] and writes its leaderboard file (path in files[name])."""
  preds = evaluation.predict_everywhere(model, examples, prompts, config, fields)
  _record(results, files, name, spec, examples, preds, config, workdir, file=file)
  if evaluation.wants_nll(config, examples):
    _record_nll(results, files, name, examples,
                evaluation.gold_nll(model, examples, prompts, config, fields))


def _record_nll(results, files, name, examples, nll) -> None:
  """Row `name`'s mean gold NLL into results, per question beside its predictions file."""
  results[name]["gold_nll"] = float(np.mean(nll))
  if distributed.is_main():
    write_json(evaluation.nll_path(files[name]), {e.id: float(v) for e, v in zip(examples, nll)})


def _record(results, files, name, spec, examples, preds, config, workdir, *,
            file: str | None = None) -> None:
  results[name] = evaluation.score(spec, examples, preds)
  path = os.path.join(workdir, "predictions",
                      f"{config.data.eval_split}_{file or slug(name)}.json")
  if distributed.is_main():
    write_json(path, metrics.leaderboard(spec.name, {e.id: p for e, p in zip(examples, preds)}))
  files[name] = path


def table(summary: dict) -> str:
  """The final comparison as a Markdown table."""
  ev = summary.get("eval", {})
  rows = [(k, v) for k, v in ev.items() if isinstance(v, dict)]
  if not rows:
    return "(no evaluation)"
  keys = [k for k in rows[0][1] if not k.endswith("_mean")]
  lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  for name, scores in rows:
    lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.4f}" for k in keys) + " |")
  return "\n".join(lines)
