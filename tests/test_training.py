"""Training: bad configs fail before compile, frozen weights stay frozen, resume and determinism
are exact, and the train entry point runs end to end (tiny random LLM, synthetic data)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from tapper_jax import models
from tapper_jax.tapper.bank import mean_embedder
from tapper_jax.training import examples as data
from tapper_jax.training import setup, steps
from tapper_jax.training.checkpoint import Checkpoints
from tapper_jax.training.loop import StageRun, plan, prompt_format, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import synthetic as synthetic_config  # noqa: E402  (configs/synthetic.py)


def tiny_config(**stage2):
  c = synthetic_config.get_config("tiny")
  c.progress = False
  c.stage2.update(stage2)
  return c


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory, model_cache):
  c = tiny_config()
  root = str(tmp_path_factory.mktemp("synth"))
  _, folder = data.load_task(c, root)
  return folder


def test_bad_configs_fail_before_any_compile():
  c = tiny_config()
  setup.validate(c, 1)
  cases = [("task", "LaMP_9", "unknown LaMP task"),
           ("stage", "3", "config.stage"),
           ("stage2.prefix_len", 0, "stage2.prefix_len"),
           ("stage2.prefix_len", -2, "stage2.prefix_len"),
           ("mesh.shape", (3, 1, 1), "needs 3 devices"),
           ("mesh.shape", (-1, -1, 1), "at most one -1"),
           ("stage2.batch_size", 6, "multiple"),
           ("data.source", "s3", "data.source"),
           ("stage2.table_memory", "disk", "table_memory"),
           ("model.remat", "some", "model.remat"),
           ("model.scan_unroll", -1, "model.scan_unroll"),
           ("train_micro_batches", -1, "train_micro_batches"),
           ("train_micro_batches", 3, "train_micro_batches")]
  for field, value, message in cases:
    bad = tiny_config()
    node, _, leaf = field.rpartition(".")
    (bad[node] if node else bad)[leaf] = value
    with pytest.raises(setup.ConfigError, match=message):
      setup.validate(bad, 4 if field == "stage2.batch_size" else 1)
  bad = tiny_config()
  bad.mesh.shape = (1, 3, 1)
  with pytest.raises(setup.ConfigError, match="does not divide|needs"):
    setup.validate(bad, 8)
  with pytest.raises(setup.ConfigError, match="unknown LaMP task"):  # through the entry point
    bad = tiny_config()
    bad.task = "LaMP_9"
    train_and_evaluate(bad, "/nonexistent/never/created")
  assert not os.path.exists("/nonexistent/never/created")


def _stage2_run(config, folder, tok_llm, spare_rows: int = 0):
  """(run, dataset, id_map) of a stage-2 run; `spare_rows` table rows beyond the users'."""
  llm, tok = tok_llm
  config.data.folder = folder
  p = plan(config, folder)
  emb = np.asarray(llm.model.embed_tokens.embedding.get_value())
  bank = data.build_bank(p.spec, [p.stage1_qs, p.eval_qs], mean_embedder(tok, emb, 128))
  ex = p.stage2
  id_map = {u: i for i, u in enumerate(p.users)}
  hist = data.HistoryFields(ex, bank, data.embed_queries(ex, mean_embedder(tok, emb, 128)), id_map, 8, 8)
  mesh = setup.make_mesh(config)
  run = StageRun(2, llm, config, mesh, len(id_map) + spare_rows, config.stage2.steps)
  ds = data.train_dataset(ex, prompt_format(config, tok), config, config.stage2, seed=0,
                          history=hist)
  return run, ds, id_map


def test_frozen_weights_bit_identical_and_absent_from_gradients(synth_folder, model_cache,
                                                                tmp_path):
  config = tiny_config()
  config.stage2.steps = 3
  llm, tok = models.load("tiny-random")
  before = jax.tree.map(np.array, nnx.state(llm))
  run, ds, id_map = _stage2_run(config, synth_folder, (llm, tok))
  frozen_before = jax.tree.map(np.array, run.frozen)
  state = run.fit(ds, str(tmp_path), id_map)
  assert int(state["step"]) == 3
  jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.array, run.frozen))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, nnx.state(llm)))
  # The gradient tree holds exactly the trainable leaves: no backbone kernel appears in it.
  from tapper_jax.training.loop import HOST_ONLY
  batch = {k: v for k, v in next(iter(ds)).items() if k not in HOST_ONLY}
  trainable = {"params": state["params"], "table": state["table"]}
  (_, _), grads = steps.grads_fn(run.graphdef)(trainable, run.frozen, batch, jax.random.key(0))
  paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(grads)}
  frozen_paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(run.frozen)}
  assert paths and not any("'kernel'" in p and "lora" not in p and "tapper" not in p for p in paths)
  assert not paths & frozen_paths
  assert any("lora_a" in p for p in paths) and any("lambda_t" in p for p in paths)
  assert any("table" in p for p in paths)
  # Training moved what it trains.
  assert np.abs(np.asarray(grads["table"]["tapper"]["users"]["table"][...])).sum() > 0


def _final_params(workdir, step):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "stage2", "checkpoints"),
                              item_names=("state", "prefix", "users", "data"))
  got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  prefix=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, {"state": got["state"], "prefix": got["prefix"]})


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_resume_is_exact_and_training_is_deterministic(synth_folder, model_cache, tmp_path):
  def cfg():
    c = tiny_config()
    c.stage = "2"  # on the tiny random backbone: the resume machinery is what is tested here
    c.data.folder = synth_folder
    c.evaluate = False
    c.stage2.steps = 6
    c.checkpoint_every = 3
    return c

  straight, again, resumed = (str(tmp_path / n) for n in ("straight", "again", "resumed"))
  train_and_evaluate(cfg(), straight)
  train_and_evaluate(cfg(), again)
  out = train_and_evaluate(cfg(), resumed, stop_after=3)
  assert out == {"stopped_after": 3, "stage": 2}
  assert Checkpoints(os.path.join(resumed, "stage2", "checkpoints"), keep=2).latest_step() == 3
  summary = train_and_evaluate(cfg(), resumed)
  assert [r["step"] for r in summary["stages"]["2"]["log"]] == [4, 5, 6]  # continued, not redone
  a, b, r = (_final_params(d, 6) for d in (straight, again, resumed))
  jax.tree.map(np.testing.assert_array_equal, a, b)  # same seed, same config
  jax.tree.map(np.testing.assert_array_equal, a, r)  # 6 straight == 3 + restore + 3
  # The prefix table and its user map restore on their own (serving needs nothing else).
  from tapper_jax.training.checkpoint import load_prefix_table
  table, id_map = load_prefix_table(os.path.join(resumed, "stage2", "checkpoints"))
  np.testing.assert_array_equal(table, jax.tree.leaves(r["prefix"])[0])
  assert sorted(id_map.values()) == list(range(len(id_map))) and table.shape[0] >= len(id_map)
  first = _final_params(straight, 3)
  assert not np.array_equal(jax.tree.leaves(first["prefix"])[0], jax.tree.leaves(a["prefix"])[0])


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_train_entry_point_one_step_end_to_end(synth_folder, model_cache, tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache,
         "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
  config = os.path.join(REPO, "configs", "synthetic.py")
  cmd = [sys.executable, "-m", "tapper_jax.train", f"--config={config}:tiny",
         "--workdir=run",  # relative, as users type it (Orbax itself needs absolute paths)
         "--config.stage1.steps=1", "--config.stage2.steps=1",
         f"--config.data.folder={synth_folder}"]
  p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| TAP-PER |" in p.stdout and "| non-personalized |" in p.stdout
  import json
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["stages"]["1"]["steps"] == 1 and summary["stages"]["2"]["steps"] == 1
  assert set(summary["eval"]["TAP-PER"]) >= {"accuracy", "f1"}
  preds = json.loads((workdir / "predictions" / "test_tap_per.json").read_text())
  assert len(preds["golds"]) == summary["eval"]["questions"] == 4
  assert (workdir / "backbone" / "model.safetensors").is_file()
  assert os.listdir(workdir / "tensorboard" / "stage2")
  plots = sorted(os.listdir(workdir / "plots"))
  assert {"training_curves.png", "results.png", "decay.png", "attention_1.png"} <= set(plots)
  assert sorted(os.path.basename(p) for p in summary["plots"]) == plots
  # A locked config: a misspelt override is refused by name.
  p = subprocess.run(cmd[:4] + ["--config.stage2.prefix_lenn=4"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and "prefix_lenn" in p.stderr


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_offline_config_trains_on_real_movielens(shared_data, model_cache, tmp_path):
  """configs/offline.py on a real-data folder (MovieLens tags), tiny model, both stages."""
  import offline as offline_config  # configs/offline.py
  from tapper_jax.data import build_offline
  out = str(tmp_path / "offline")
  build_offline.build(shared_data, out, names=["movielens_2M"])
  c = offline_config.get_config("movielens_2M,tiny")
  c.data.folder = os.path.join(out, "movielens_2M")
  c.data.eval_max_examples = 12  # 5 test questions per user: 3 users
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  assert c.data.source == "lamp" and summary["task"] == "LaMP_2M"
  # The evaluated users are the trained users: each has a row, none is a cold start.
  assert summary["stages"]["2"]["users"] == summary["eval_users"] == 3
  assert summary["cold_start_eval_users"] == 0
  assert summary["eval"]["questions"] == 12 and "f1" in summary["eval"]["TAP-PER"]


def test_every_example_sees_only_its_own_users_earlier_records(synth_folder, model_cache):
  """Stage-2 record examples and evaluation questions: each history holds only records of the
  example's own user that come before it in date order, and the bank returns exactly those."""
  _, tok = models.load("tiny-random")
  c = tiny_config()
  c.data.folder = synth_folder
  c.data.eval_max_examples = 0
  p = plan(c, synth_folder)
  assert len({e.id for e in p.stage2}) == len(p.stage2) > len(p.users)
  emb = np.random.default_rng(0).normal(size=(tok.vocab_size, 8)).astype(np.float32)
  bank = data.build_bank(p.spec, [p.stage1_qs, p.eval_qs], mean_embedder(tok, emb, 128))
  profiles = {q.user_id: {r.id: r for r in q.profile} for q in p.eval_qs}
  own = {}
  for e in p.stage2:
    assert e.target in p.spec.labels and e.input.startswith("Which tag")
    rid = e.id.split("/", 1)[1]
    recs = profiles[e.user]
    assert rid not in e.history and all(recs[h].day <= e.day for h in e.history)
    own.setdefault(e.user, []).append((e.day, len(e.history)))
    rows = bank.rows(e.user, e.history)
    assert all(bank.index[(e.user, h)] == r for h, r in zip(e.history, rows))
    assert all(u == e.user for (u, _), row in bank.index.items() if row in set(rows.tolist()))
  for user, seq in own.items():  # the k-th record sees exactly the k before it
    assert [n for _, n in sorted(seq)] == list(range(len(seq)))
  for e, q in zip(p.evaluate, p.eval_qs):
    assert e.history == tuple(r.id for r in q.profile) and e.user == q.user_id
    assert all(r.day <= e.day for r in q.profile)


def test_history_fields_carry_the_examples_own_history_and_the_controls_swap_it(synth_folder,
                                                                               model_cache):
  _, tok = models.load("tiny-random")
  c = tiny_config()
  c.data.folder = synth_folder
  c.data.eval_max_examples = 0
  p = plan(c, synth_folder)
  emb = np.random.default_rng(1).normal(size=(tok.vocab_size, 8)).astype(np.float32)
  bank = data.build_bank(p.spec, [p.stage1_qs, p.eval_qs], mean_embedder(tok, emb, 128))
  id_map = {u: i for i, u in enumerate(p.users)}
  slots = data.history_slots([p.stage2, p.evaluate], 0, 64)
  f = data.HistoryFields(p.evaluate, bank, data.embed_queries(p.evaluate, mean_embedder(tok, emb, 128)),
                         id_map, slots)
  e = p.evaluate[0]
  got = f.fields(0)
  n = len(e.history)
  assert slots >= max(len(x.history) for x in p.evaluate) and got["hist_valid"].sum() == n
  np.testing.assert_array_equal(got["hist_z"][:n], bank.z[bank.rows(e.user, e.history)])
  np.testing.assert_allclose(got["hist_age"][:n], e.day - bank.day[bank.rows(e.user, e.history)])
  assert got["user_row"] == id_map[e.user]
  other = next(j for j, x in enumerate(p.evaluate) if x.user != e.user)
  swapped = f.fields(0, user=p.evaluate[other].user, history_of=other)
  assert swapped["user_row"] == id_map[p.evaluate[other].user]
  np.testing.assert_array_equal(swapped["query_z"], got["query_z"])  # the query stays its own
  assert swapped["hist_valid"].sum() == len(p.evaluate[other].history)
  assert f.fields(0, user="")["user_row"] == -1
  from tapper_jax.training.loop import _control_fields
  cold = _control_fields("cold", p.evaluate, f)(0)  # P_q alone: own history, no row
  assert cold["user_row"] == -1
  np.testing.assert_array_equal(cold["hist_z"], got["hist_z"])
  empty = _control_fields("no_personal", p.evaluate, f)(0)
  assert empty["user_row"] == -1 and not empty["hist_valid"].any()


@pytest.mark.parametrize("switch", [dict(prefix=False), dict(user_prefix=False),
                                    dict(query_prefix=False, bridge_lora=False)])
def test_controls_and_ablations_train_only_what_they_keep(synth_folder, model_cache, switch,
                                                         tmp_path):
  config = tiny_config(**switch)
  config.stage2.steps = 1
  llm, tok = models.load("tiny-random")
  run, ds, id_map = _stage2_run(config, synth_folder, (llm, tok))
  state = run.fit(ds, str(tmp_path), id_map, stop_after=0)
  paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(
      {"params": state["params"], "table": state["table"]})}
  has = lambda s: any(s in p for p in paths)  # noqa: E731
  assert has("lora_a") == config.stage2.bridge_lora
  assert has("table") == (config.stage2.prefix and config.stage2.user_prefix)
  assert has("attention") == (config.stage2.prefix and config.stage2.query_prefix)


def test_lambdas_take_their_own_learning_rate(synth_folder, model_cache):
  """One AdamW update with unit gradients moves each leaf by its group's rate (first Adam step:
  |update| = lr): the lambdas by lambda_learning_rate, the table by its own, the rest by lr."""
  config = tiny_config()
  config.stage2.update(learning_rate=1e-3, table_learning_rate=1e-2, lambda_learning_rate=0.25,
                       warmup=0.0, weight_decay=0.0, grad_clip=1e9)
  llm, tok = models.load("tiny-random")
  run, _, _ = _stage2_run(config, synth_folder, (llm, tok))
  state = run.fresh_state()
  trainable = {"params": state["params"], "table": state["table"]}
  ones = jax.tree.map(jnp.ones_like, trainable)
  updates, _ = run.tx.update(ones, run.tx.init(trainable), trainable)
  seen = set()
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    name = "/".join(map(str, path))
    want = (0.25 if "lambda_" in name else 1e-2 if name.startswith("['table']") else
            0.0 if "z_center" in name or "z_scale" in name else 1e-3)  # fixed statistics
    np.testing.assert_allclose(np.abs(np.asarray(u)), want, rtol=1e-4, err_msg=name)
    seen.add(want)
  assert seen == {0.25, 1e-2, 1e-3, 0.0}


def test_weight_decay_skips_biases_and_lambdas_and_the_table_shares_the_rate(synth_folder,
                                                                            model_cache):
  """One AdamW update with zero gradients is the decoupled decay alone, -lr * wd * value: on
  every kernel, LoRA factor and table row, never on a bias or a lambda (the official code's HF
  Trainer). table_learning_rate 0 = the shared rate (the official code: one rate)."""
  config = tiny_config()
  config.stage2.update(learning_rate=1e-3, table_learning_rate=0.0, lambda_learning_rate=0.0,
                       warmup=0.0, weight_decay=0.5, grad_clip=1e9)
  llm, tok = models.load("tiny-random")
  run, _, _ = _stage2_run(config, synth_folder, (llm, tok))
  state = run.fresh_state()
  leaves, tree = jax.tree.flatten({"params": state["params"], "table": state["table"]})
  rng = np.random.default_rng(0)  # nonzero values everywhere (LoRA B starts at 0)
  trainable = jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=np.shape(x)), jnp.float32)
                                        for x in leaves])
  zeros = jax.tree.map(jnp.zeros_like, trainable)
  updates, _ = run.tx.update(zeros, run.tx.init(trainable), trainable)
  kinds = set()
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(updates),
                          jax.tree.leaves(trainable)):
    name = "/".join(map(str, path))
    fixed = "z_center" in name or "z_scale" in name or "lambda_" in name or "bias" in name
    want = 0.0 if fixed else -1e-3 * 0.5 * np.asarray(v)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-5, atol=1e-12, err_msg=name)
    kinds.add(("table" if "table" in name else "lambda" if "lambda_" in name else
               "bias" if "bias" in name else "lora" if "lora" in name else
               "fixed" if fixed else "kernel"))
  assert kinds == {"table", "lambda", "bias", "lora", "kernel", "fixed"}


def test_standardized_z_statistics_come_from_the_bank_and_stay_fixed(synth_folder, model_cache,
                                                                   tmp_path):
  """With stage2.standardize_z the method's init values (the record bank's mean and inverse
  spread) land in the fresh state and survive training steps (weight decay on, grads flowing)
  bit for bit; without it they stay (0, 1), the paper's raw z."""
  from tapper_jax import methods
  from tapper_jax.tapper.attention import standardize_stats
  for on in (True, False):
    config = tiny_config(standardize_z=on)
    config.stage2.update(steps=2, weight_decay=0.1)
    config.data.folder = synth_folder
    llm, tok = models.load("tiny-random")
    p = plan(config, synth_folder)
    m = methods.get(config)
    id_map = {u: i for i, u in enumerate(p.users)}
    fields = m.fields(p.stage2, p, tok, llm, id_map)
    values = m.init_values()
    run = StageRun(2, llm, config, setup.make_mesh(config), len(id_map), 2, values)
    ds = data.train_dataset(p.stage2, prompt_format(config, tok), config, config.stage2, seed=0,
                            history=fields)
    state = run.fit(ds, str(tmp_path / str(on)), id_map)
    att = state["params"]["tapper"]["attention"]
    center, scale = np.asarray(att["z_center"][...]), float(att["z_scale"][...])
    if on:
      want_c, want_s = standardize_stats(m._bank.z)
      np.testing.assert_array_equal(center, want_c)
      assert scale == np.float32(want_s) and np.linalg.norm(center) > 0
    else:
      assert values == {} and not center.any() and scale == 1.0
    assert int(state["step"]) == 2


@pytest.mark.slow  # a training run: the default suite keeps a margin under 15 minutes
def test_user_dropout_trains_the_drawn_examples_as_cold_starts(synth_folder, model_cache):
  """The step's loss with stage2.user_dropout equals the plain loss on the same batch with the
  drawn examples' rows set to -1 (P_u = 0), and differs from the loss with every row kept."""
  from tapper_jax.training.loop import HOST_ONLY
  config = tiny_config(user_dropout=0.5)
  config.stage2.steps = 1
  llm, tok = models.load("tiny-random")
  run, ds, _ = _stage2_run(config, synth_folder, (llm, tok))
  batch = {k: jnp.asarray(v) for k, v in next(iter(ds)).items() if k not in HOST_ONLY}
  state = run.fresh_state()
  trainable = {"params": state["params"], "table": state["table"]}
  key = jax.random.fold_in(state["rng"], state["step"])
  drop = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, batch["user_row"].shape))
  assert drop.any() and not drop.all()  # this seed drops some rows and keeps others
  cold = {**batch, "user_row": jnp.where(drop, -1, batch["user_row"])}
  want, _ = steps.loss_fn(run.graphdef, trainable, run.frozen, cold, key, False)
  kept, _ = steps.loss_fn(run.graphdef, trainable, run.frozen, batch, key, False)
  _, metrics = jax.jit(steps.train_step_fn(run.graphdef, run.tx, run.lr, False, None, 0.5))(
      state, run.frozen, batch)
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-6)
  assert abs(float(kept) - float(want)) > 1e-4
  bad = tiny_config(user_dropout=1.0)
  with pytest.raises(setup.ConfigError, match="user_dropout"):
    setup.validate(bad, 1)


def test_a_checkpoint_from_before_the_z_statistics_serves_with_raw_z():
  """Params a checkpoint lacks come back as the values it was trained with (z_center 0,
  z_scale 1: raw z); any other absent param is an error that names it."""
  from tapper_jax.training.checkpoint import _fill_absent
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  absent = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sh)  # noqa: E731
  got = _fill_absent({"tapper": {"attention": {
      "z_center": nnx.Param(absent(4)), "z_scale": nnx.Param(absent()),
      "lambda_t": nnx.Param(jnp.float32(0.3))}}})["tapper"]["attention"]
  np.testing.assert_array_equal(got["z_center"][...], np.zeros(4))
  assert float(got["z_scale"][...]) == 1.0 and float(got["lambda_t"][...]) == np.float32(0.3)
  with pytest.raises(KeyError, match="proj"):
    _fill_absent({"tapper": {"attention": {"proj": {"kernel": nnx.Param(absent(2, 2))}}}})


def test_init_values_must_name_a_parameter_of_the_right_shape():
  params = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)[1]
  np.testing.assert_array_equal(steps.with_values(params, {"bias": [1, 2, 3]})["bias"][...],
                                [1, 2, 3])
  with pytest.raises(KeyError, match="no parameter"):
    steps.with_values(params, {"tapper/attention/z_center": np.zeros(3)})
  with pytest.raises(ValueError, match="shape"):
    steps.with_values(params, {"bias": np.zeros(4)})


def test_log_lines_go_above_the_bar_and_metrics_land_in_jsonl(tmp_path, capsys, monkeypatch):
  import json as _json
  from absl import logging as absl_logging
  from tapper_jax.training.logger import Logger, bars_and_logs
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.use_absl_handler()  # as app.run does (pytest may not have attached it)
  handler = absl_logging.get_absl_handler().python_handler
  monkeypatch.setattr(handler, "stream", sys.stderr)  # the test's captured stderr
  path = str(tmp_path / "metrics.jsonl")
  log = Logger(str(tmp_path / "tb"), total=3, initial=0, desc="stage 2", enabled=True, jsonl=path)
  with bars_and_logs(True):
    log.step(1, 10, {"loss": jnp.asarray(2.0)})
    log.step(2, 10, {"loss": jnp.asarray(1.5)})
    absl_logging.info("a message for the user")
  log.close()
  err = capsys.readouterr().err
  # Each log line stands on a line of its own: the bar (drawn with \r) never shares it.
  lines = [seg for line in err.split("\n") for seg in line.split("\r")]
  assert any(seg.endswith("a message for the user") and "stage 2" not in seg for seg in lines)
  assert any("step 2: loss=1.5" in seg and "stage 2:" not in seg.split("step 2")[0]
             for seg in lines)
  rows = [_json.loads(x) for x in open(path)]
  assert [(r["stage"], r["step"], r["loss"]) for r in rows] == [("stage 2", 1, 2.0),
                                                                ("stage 2", 2, 1.5)]
  assert handler.stream is sys.stderr  # outside the context, absl's own stream again


def test_history_weights_are_the_attention_over_the_real_records():
  from flax import nnx as _nnx
  from tapper_jax.tapper.model import PersonalizedLM, Tapper
  from tapper_jax.training.plots import history_weights
  tapper = Tapper(4, 2, 1, rngs=_nnx.Rngs(0))
  model = PersonalizedLM(None, tapper)
  rng = np.random.RandomState(0)
  f = {"query_z": rng.randn(4).astype(np.float32), "hist_z": rng.randn(8, 4).astype(np.float32),
       "hist_age": np.arange(8, dtype=np.float32)[::-1].copy(),
       "hist_valid": np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)}
  ages, w = history_weights(model, f)
  assert ages.tolist() == [7.0, 6.0, 5.0] and w.shape == (3,)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  full = np.asarray(tapper.attention.weights(*(jnp.asarray(f[k])[None] for k in
                                               ("query_z", "hist_z", "hist_age", "hist_valid"))))
  np.testing.assert_allclose(w, full[0, :3], rtol=1e-6)


@pytest.mark.slow  # a training run: the default suite keeps a margin under 15 minutes
def test_sparse_table_step_equals_dense_on_batch_rows_and_leaves_other_rows(synth_folder,
                                                                            model_cache, tmp_path):
  """One stage-2 step from the same state: with `sparse_table` the params and the batch's table
  rows equal the dense AdamW step's; every other row is bit-identical to its init. A run with it
  trains, checkpoints its row state and resumes."""
  from tapper_jax.training.loop import HOST_ONLY
  llm_tok = models.load("tiny-random")
  results = {}
  for sparse in (False, True):
    config = tiny_config(sparse_table=sparse, steps=4, warmup=0.0)  # step 0 has a learning rate
    run, ds, id_map = _stage2_run(config, synth_folder, llm_tok)
    batch = setup.put_batch({k: v for k, v in next(iter(ds)).items() if k not in HOST_ONLY},
                            run.mesh, config)
    state = run.fresh_state()
    init_table = np.asarray(jax.tree.leaves(state["table"])[0])
    with run.rules(), jax.set_mesh(run.mesh):
      new, m = run.step_fn(batch)(state, run.frozen, batch)
    results[sparse] = (jax.tree.map(np.asarray, new), init_table, np.asarray(batch["user_row"]),
                       float(m["grad_norm"]))
  (dense, init, rows, gn_d), (sp, init2, _, gn_s) = results[False], results[True]
  np.testing.assert_array_equal(init, init2)
  assert abs(gn_d - gn_s) <= 1e-5 * gn_d  # the clip sees the same norm
  for a, b in zip(jax.tree.leaves(dense["params"]), jax.tree.leaves(sp["params"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  td, ts = jax.tree.leaves(dense["table"])[0], jax.tree.leaves(sp["table"])[0]
  touched = np.unique(rows[rows >= 0])
  assert len(touched) and not np.allclose(ts[touched], init[touched])
  np.testing.assert_allclose(ts[touched], td[touched], rtol=1e-5, atol=1e-7)
  rest = np.setdiff1d(np.arange(len(init)), touched)
  np.testing.assert_array_equal(ts[rest], init[rest])
  # A whole run with it: checkpoints hold the row state, and a resume continues from it.
  config = tiny_config(sparse_table=True, steps=4)
  run, ds, id_map = _stage2_run(config, synth_folder, llm_tok)
  run.fit(ds, str(tmp_path), id_map, stop_after=2)
  run2, ds2, _ = _stage2_run(config, synth_folder, llm_tok)
  state = run2.fit(ds2, str(tmp_path), id_map)
  assert int(state["step"]) == 4 and int(np.asarray(state["sparse"]["last"][...]).max()) == 4


@pytest.mark.parametrize("sparse", [False, True])
def test_a_non_finite_step_leaves_the_whole_state_bit_identical(sparse, synth_folder, model_cache):
  from tapper_jax.training.loop import HOST_ONLY
  config = tiny_config(sparse_table=sparse, steps=4, warmup=0.0)
  run, ds, _ = _stage2_run(config, synth_folder, models.load("tiny-random"))
  poison = lambda p, x: jnp.full_like(x, jnp.nan) if "norm" in jax.tree_util.keystr(p) else x  # noqa: E731
  run.frozen = jax.tree_util.tree_map_with_path(poison, run.frozen)
  batch = setup.put_batch({k: v for k, v in next(iter(ds)).items() if k not in HOST_ONLY},
                          run.mesh, config)
  state = run.fresh_state()
  before = jax.tree.map(np.array, state)
  with run.rules(), jax.set_mesh(run.mesh):
    new, m = run.step_fn(batch)(state, run.frozen, batch)
  assert not bool(m["finite"]) and ("sparse" in before) == sparse
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new), before)


@pytest.mark.slow  # a training run: the default suite keeps a margin under 15 minutes
def test_trimmed_and_unpadded_batches_train_exactly_as_the_full_budget(synth_folder,
                                                                      model_cache):
  """`train_bucket` cuts each batch's token axis to its longest row (rounded up): the cut is
  right padding only, so the same state gives the same loss and gradients as the batch padded
  to the whole budget; `train_unpad` (the per-token layers on real tokens alone) too.
  (Gradients, not an Adam step: Adam's first step maps a gradient near its eps to any update,
  so fp noise would show. LoRA dropout is off: its mask is drawn for the batch's shape, so
  the two would draw different, equally likely masks.)"""
  from tapper_jax.training.loop import HOST_ONLY
  llm_tok = models.load("tiny-random")
  results = {}
  for bucket, unpad in ((0, 0), (16, 0), (16, 16)):
    config = tiny_config(steps=4, warmup=0.0, bridge_dropout=0.0)
    config.train_bucket, config.train_unpad = bucket, unpad
    config.max_prompt_tokens = 160  # room to spare: the tiny prompts fill 88
    run, ds, _ = _stage2_run(config, synth_folder, llm_tok)
    host = next(iter(ds))
    batch = setup.put_batch({k: v for k, v in host.items() if k not in HOST_ONLY}, run.mesh,
                            config)
    state = run.fresh_state()
    trainable = {"params": state["params"], "table": state["table"]}
    with run.rules(), jax.set_mesh(run.mesh):
      (loss, _), grads = jax.jit(steps.grads_fn(run.graphdef))(trainable, run.frozen, batch,
                                                                jax.random.key(0))
    results[bucket, unpad] = (host, float(loss), jax.tree.map(np.asarray, grads))
  (full, loss_full, g_full), cut = results[0, 0], results[16, 0][0]
  width = cut["input_ids"].shape[1]
  assert width % 16 == 0 and width < full["input_ids"].shape[1]
  assert cut["attention_mask"].sum(1).max() > width - 16  # no whole bucket of padding left
  np.testing.assert_array_equal(cut["index"], full["index"])
  np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][:, :width])
  assert not full["attention_mask"][:, width:].any() and not full["loss_mask"][:, width:].any()
  unpadded = results[16, 16][0]
  real = int(unpadded["attention_mask"].sum())  # the prefix slots are the model's to add
  assert unpadded["unpad"].shape == (1, -(-real // 16) * 16) and "unpad" not in cut
  # Relative to the whole gradient's scale: score_out's bias has a zero gradient (the softmax
  # ignores a shift), so its two values are fp noise around 0.
  scale = max(np.abs(g).max() for g in jax.tree.leaves(g_full))
  for _, loss, grads in (results[16, 0], results[16, 16]):  # trimmed; trimmed and unpadded
    assert abs(loss - loss_full) <= 1e-5 * abs(loss_full)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(grads), strict=True):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)


def test_micro_batches_auto_is_two_on_a_cpu_where_they_fit():
  """train_micro_batches = 0 (auto): 2 on this CPU backend; 1 with train_unpad or where 2 x
  the batch shards do not divide the batch; an explicit count is kept (the default: 1)."""
  c = tiny_config()
  assert c.train_micro_batches == 1 and setup.micro_batches(c, 8, 1) == 1
  c.train_micro_batches = 0
  assert jax.default_backend() == "cpu"
  assert setup.micro_batches(c, 8, 1) == 2 and setup.micro_batches(c, 8, 4) == 2
  assert setup.micro_batches(c, 6, 2) == 1
  c.train_unpad = 16
  assert setup.micro_batches(c, 8, 1) == 1
  c.train_unpad, c.train_micro_batches = 0, 4
  assert setup.micro_batches(c, 8, 1) == 4


def test_micro_batches_give_the_whole_batch_loss_and_gradients(synth_folder, model_cache):
  """`train_micro_batches`: the batch's rows sorted by length and run as micro-batches, each
  cut to its own longest row. The token-weighted sum of their losses and gradients equals the
  whole batch's, computed at the full width on the same rows (LoRA dropout off: its masks are
  drawn per micro-batch); the train step (sparse table, row-wise AdamW) logs that loss."""
  from tapper_jax.training.loop import HOST_ONLY
  llm_tok = models.load("tiny-random")
  config = tiny_config(steps=4, warmup=0.0, bridge_dropout=0.0, sparse_table=True)
  config.train_bucket, config.train_micro_batches = 8, 2
  config.max_prompt_tokens = 160
  run, ds, _ = _stage2_run(config, synth_folder, llm_tok)
  it = iter(ds)
  for _ in range(8):  # a batch whose short half is narrower than its long half
    host = next(it)
    widths = tuple(int(w) for w in host["micro"])
    if widths[0] < widths[1]:
      break
  assert widths[0] < widths[1] == host["input_ids"].shape[1]
  batch = setup.put_batch({k: v for k, v in host.items() if k not in HOST_ONLY}, run.mesh, config)
  state = run.fresh_state()
  trainable = {"params": state["params"], "table": state["table"]}
  key = jax.random.key(0)
  with run.rules(), jax.set_mesh(run.mesh):
    (loss, count), grads = jax.jit(steps.grads_fn(run.graphdef))(trainable, run.frozen, batch, key)
    (loss_m, count_m), grads_m = jax.jit(steps.grads_fn(run.graphdef, micro=(widths, 1)))(
        trainable, run.frozen, batch, key)
    # One micro-batch alone is not the batch: the weighting matters.
    short = steps.micro_batches(batch, widths, 1)[0]
    (alone, _), _ = jax.jit(steps.grads_fn(run.graphdef))(trainable, run.frozen, short, key)
    _, metrics = run.step_fn(batch, widths)(state, run.frozen, batch)  # donates the state
  assert float(count_m) == float(count) == host["loss_mask"].sum()
  assert abs(float(loss_m) - float(loss)) <= 1e-5 * abs(float(loss))
  assert abs(float(metrics["loss"]) - float(loss)) <= 1e-5 * abs(float(loss))
  scale = max(np.abs(g).max() for g in jax.tree.leaves(grads))
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_m), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * scale)
  assert abs(float(alone) - float(loss)) > 1e-3


def _count(jaxpr, primitive: str) -> int:
  """Equations of `primitive` in a jaxpr and every sub-jaxpr (scan bodies, remat)."""
  n = 0
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name == primitive
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      n += _count(sub, primitive)
  return n


def test_remat_policies_same_gradients_and_dots_not_recomputed(synth_folder, model_cache):
  """Every remat policy gives the gradients of none (dropout masks recomputed from the same
  key); "full" recomputes the layer's matmuls in the backward, "dots" recomputes none."""
  config = tiny_config(bridge_dropout=0.2)
  llm, tok = models.load("tiny-random")
  run, ds, _ = _stage2_run(config, synth_folder, (llm, tok))
  from tapper_jax.training.loop import HOST_ONLY
  batch = {k: v for k, v in next(iter(ds)).items() if k not in HOST_ONLY}
  state = run.fresh_state()
  trainable = {"params": state["params"], "table": state["table"]}
  args = (trainable, run.frozen, batch, jax.random.key(3))
  grads, dots, draws = {}, {}, {}
  for remat in ("none", "full", "dots", True):
    fn = steps.grads_fn(run.graphdef, remat)
    (loss, _), grads[remat] = jax.jit(fn)(*args)
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    dots[remat] = _count(jaxpr, "dot_general")
    draws[remat] = _count(jaxpr, "random_bits")
  for remat in ("full", "dots", True):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 grads["none"], grads[remat])
  assert dots["dots"] == dots["none"] < dots["full"] == dots[True]
  # "dots" keeps the dropout masks: no mask is drawn twice, as "full" draws each.
  assert 0 < draws["dots"] == draws["none"] < draws["full"]
  with pytest.raises(ValueError, match="model.remat"):
    models.llama.remat_policy("some")


def test_unrolled_layer_scan_equals_the_scan(model_cache):
  """scan_unroll=0 (straight-line layers) computes what the rolled scan does, values and
  input gradients, under each remat policy; the unroll reaches the scan."""
  rolled, _ = models.load("tiny-random")
  unrolled, _ = models.load("tiny-random", scan_unroll=0)
  emb = jax.random.normal(jax.random.key(1), (2, 12, rolled.config.hidden_size)) * 0.02
  mask = jnp.ones((2, 12), jnp.int32).at[1, 9:].set(0)

  def loss(model, remat):
    return lambda e: jnp.sum(model.hidden_states(inputs_embeds=e, attention_mask=mask,
                                                 remat=remat)[0] ** 2)
  want, want_g = jax.value_and_grad(loss(rolled, "none"))(emb)
  # Recomputing a layer in another fusion moves float32 sums by ~2e-6 of the largest
  # gradient (the rolled scan under "full" differs from "none" by as much).
  atol = 1e-5 * float(jnp.max(jnp.abs(want_g)))
  for remat in ("none", "dots", "full"):
    got, got_g = jax.value_and_grad(loss(unrolled, remat))(emb)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got_g, want_g, rtol=0, atol=atol)
  scans = [e for e in jax.make_jaxpr(loss(unrolled, "none"))(emb).jaxpr.eqns
           if e.primitive.name == "scan"]
  assert [e.params["unroll"] for e in scans] == [rolled.config.num_hidden_layers]
