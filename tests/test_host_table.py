"""The prefix table in host memory (`stage2.table_memory = "host"`): the same training as the
row-wise table on device, row for row, and checkpoints that move between the two."""

import shutil

import jax
import numpy as np
import pytest
from tables import assert_trained_close

from tapper_jax import models
from tapper_jax.training.host_table import HostTable
from test_training import _stage2_run, synth_folder, tiny_config  # noqa: F401  (a fixture)


def _abstract(u=10, l=2, d=3):
  from flax import nnx
  from tapper_jax.training.sparse_table import RowStep
  table = {"prefix": {"table": nnx.Param(jax.ShapeDtypeStruct((u, l, d), np.float32))}}
  return {"table": table, "sparse": {"m": table, "v": table,
                                     "last": RowStep(jax.ShapeDtypeStruct((u,), np.int32))}}


def test_gather_and_scatter_touch_only_the_batch_rows():
  host = HostTable.fresh(_abstract(), seed=0)
  assert host.table.std() == pytest.approx(0.02, rel=0.5) and not host.m.any()
  before = host.table.copy()
  every = np.array([7, 2, -1, 7, 4, 2], np.int32)  # the global batch; -1: an unknown user
  local = every[3:]  # this process's rows of it
  rows, uniq, remap = host.gather(local, every)
  assert uniq.tolist() == [2, 4, 7, -1, -1, -1] and remap.tolist() == [2, 1, 0]
  np.testing.assert_array_equal(rows["w"][remap], before[local])
  assert rows["w"].shape == (6, 2, 3) and rows["last"].shape == (6,)
  new = {k: rows[k] + 1.0 for k in ("w", "m", "v")}
  host.scatter(uniq, new, step=4)
  np.testing.assert_array_equal(host.table[[2, 4, 7]], before[[2, 4, 7]] + 1.0)
  rest = [0, 1, 3, 5, 6, 8, 9]
  np.testing.assert_array_equal(host.table[rest], before[rest])
  assert host.last.tolist() == [0, 0, 5, 0, 5, 0, 0, 5, 0, 0] and host.m[rest].sum() == 0
  assert host.gather(np.array([-1]), np.array([-1]))[2].tolist() == [-1]


def _batches(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _state_with_table(run, state):
  """The whole row-wise state (device or host table) as numpy."""
  if run.on_host:
    state = {**state, **run.table.state()}
  return jax.tree.map(np.array, state)


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_host_table_trains_as_the_row_wise_table_on_device(synth_folder, model_cache):
  """Same init, same batches: after 3 steps the params, the table, its moments and each row's
  last step equal the device row-wise run's; rows no batch touched are their init (the table
  has rows of no user, as a table padded for its shards has)."""
  llm_tok = models.load("tiny-random")
  out = {}
  for memory in ("device", "host"):
    config = tiny_config(sparse_table=True, table_memory=memory, steps=4, warmup=0.0)
    run, ds, _ = _stage2_run(config, synth_folder, llm_tok, spare_rows=3)  # rows never in a batch
    state = run.fresh_state()
    if memory == "device":
      init = jax.tree.map(np.array, {k: state[k] for k in ("table", "sparse")})
    else:  # the device run's init (numpy draws its own)
      run.table = HostTable.from_state(run.table_abstract, init)
      assert "table" not in state and "sparse" not in state
    batches = _batches(ds, 3)
    with run.rules(), jax.set_mesh(run.mesh):
      for step, b in enumerate(batches):
        state, m = run.train_step(state, b, step)
        assert bool(m["finite"])
    out[memory] = _state_with_table(run, state)
  dev, host = out["device"], out["host"]
  for a, b in zip(jax.tree.leaves(dev), jax.tree.leaves(host), strict=True):
    assert_trained_close(a, b, rtol=1e-6, atol=1e-8)
  touched = np.unique(np.concatenate([b["user_row"] for b in batches]))
  touched = touched[touched >= 0]
  table, init_table = jax.tree.leaves(host["table"])[0], jax.tree.leaves(init["table"])[0]
  rest = np.setdiff1d(np.arange(len(table)), touched)
  assert len(touched) and len(rest) and not np.allclose(table[touched], init_table[touched])
  np.testing.assert_array_equal(table[rest], init_table[rest])
  assert np.asarray(host["sparse"]["last"][...])[rest].max() == 0


@pytest.mark.slow  # three short runs (~40 s); CI runs it with the slow tests
def test_host_table_checkpoints_resume_on_host_or_on_device(synth_folder, model_cache, tmp_path):
  """A host-table run stopped at step 2 resumes to step 4 on the host, or on the device
  row-wise table from the same checkpoint: both end equal, and a restored evaluation model
  holds the host's table."""
  llm_tok = models.load("tiny-random")
  host_cfg = tiny_config(table_memory="host", steps=4)
  run, ds, id_map = _stage2_run(host_cfg, synth_folder, llm_tok)
  run.fit(ds, str(tmp_path / "host"), id_map, stop_after=2)
  shutil.copytree(tmp_path / "host", tmp_path / "device")
  ends = {}
  for memory in ("host", "device"):
    config = tiny_config(table_memory=memory, sparse_table=True, steps=4)
    run, ds, id_map = _stage2_run(config, synth_folder, llm_tok)
    state = run.fit(ds, str(tmp_path / memory), id_map)
    assert int(state["step"]) == 4
    ends[memory] = (jax.tree.map(np.array, state["params"]),
                    np.array(jax.tree.leaves(state["table"])[0]),
                    _state_with_table(run, {k: v for k, v in state.items() if k != "table"}))
  (hp, ht, hs), (dp, dt, ds_) = ends["host"], ends["device"]
  for a, b in zip(jax.tree.leaves(hp), jax.tree.leaves(dp), strict=True):
    assert_trained_close(a, b, rtol=1e-6, atol=1e-8)
  assert_trained_close(ht, dt, rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(np.asarray(hs["sparse"]["last"][...]),
                                np.asarray(ds_["sparse"]["last"][...]))
  assert np.asarray(hs["sparse"]["last"][...]).max() == 4


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_host_table_without_a_table_trains_as_on_device(synth_folder, model_cache, tmp_path):
  """The bridge-LoRA-alone control has no table: `table_memory=host` then changes nothing."""
  llm_tok = models.load("tiny-random")
  losses = {}
  for memory in ("device", "host"):
    config = tiny_config(table_memory=memory, prefix=False, steps=2)
    run, ds, id_map = _stage2_run(config, synth_folder, llm_tok)
    assert not run.on_host
    state = run.fit(ds, str(tmp_path / memory), id_map)
    losses[memory] = [r["loss"] for r in run.logged]
    assert int(state["step"]) == 2 and not jax.tree.leaves(state["table"])
  assert losses["device"] == losses["host"]


@pytest.mark.slow  # a whole run with its evaluation, then serving (~40 s)
def test_a_host_table_run_evaluates_and_serves_like_its_checkpoint(tmp_path, model_cache,
                                                                   monkeypatch):
  """End to end: a run with `table_memory=host` evaluates (its table placed on the mesh), and
  serving its workdir answers the evaluated questions as the run did; the prefix table reads
  back from a relative path."""
  import json
  import os
  import synthetic
  from tapper_jax.serving.predict import predict_file
  from tapper_jax.training.checkpoint import load_prefix_table
  from tapper_jax.training.loop import train_and_evaluate
  c = synthetic.get_config("tiny")
  c.progress, c.stage2.table_memory = False, "host"
  wd = str(tmp_path / "run")
  summary = train_and_evaluate(c, wd)
  assert summary["stages"]["2"]["table_sharding"] and summary["eval"]["TAP-PER"]
  folder = os.path.join(wd, "data", "synthetic_drift")
  with open(os.path.join(folder, "test_questions.json")) as f:
    rows = json.load(f)[: c.data.eval_max_examples]
  (tmp_path / "q").mkdir()
  with open(tmp_path / "q" / "test_questions.json", "w") as f:
    json.dump(rows, f)
  res = predict_file(wd, str(tmp_path / "q" / "test_questions.json"), str(tmp_path / "a.json"),
                     progress=False)
  with open(tmp_path / "a.json") as f, open(summary["predictions"]["TAP-PER"]) as g:
    assert json.load(f)["golds"] == json.load(g)["golds"]
  assert res["cold_users"] == 0
  monkeypatch.chdir(tmp_path)
  table, users = load_prefix_table(os.path.join("run", "stage2", "checkpoints"))
  assert table.shape[0] >= len(users) > 1


def test_checkpoints_take_a_relative_directory(tmp_path, monkeypatch):
  """Orbax refuses relative paths; the checkpointer resolves them (a benchmark's --out=bench_out)."""
  from tapper_jax.training.checkpoint import Checkpoints
  monkeypatch.chdir(tmp_path)
  host = HostTable.fresh(_abstract(), seed=1)
  ckpt = Checkpoints("rel/ckpt", keep=1)
  ckpt.save(3, {"step": np.int32(3), **host.state()}, {"u": 0}, {})
  ckpt.wait()
  got, ids, _ = ckpt.restore(3, {"step": np.int32(0)}, {"step": None},
                             host=HostTable.empty(host.abstract).state())
  ckpt.close()
  back = HostTable.from_state(host.abstract, got)
  assert ids == {"u": 0} and (tmp_path / "rel" / "ckpt").is_dir()
  np.testing.assert_array_equal(back.table, host.table)
