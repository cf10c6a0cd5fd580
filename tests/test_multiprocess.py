"""Multi-process JAX on one machine: 2 processes x 2 fake CPU devices and 4 x 1, joined through
jax.distributed on 127.0.0.1 (gloo), train the same stage-2 run as 1 process with 4 devices:
the same losses, gradient norms and final trained values, then evaluate it (each process its
share of the questions): the same answers and scores. Only process 0 writes the run's files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tables import assert_trained_close

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow  # two multi-process runs and a reference: ~2 minutes
RTOL = 1e-6  # the same mesh over the same 4 devices: one SPMD program, so equal up to rounding


def _trained(workdir):
  """The final params and table, restored onto this process's one device."""
  import jax
  from tapper_jax.training.checkpoint import restore_on_host
  _, got = restore_on_host(os.path.join(workdir, "stage2", "checkpoints"))
  return [np.asarray(x) for x in jax.tree.leaves({"params": got["state"]["params"],
                                                  "table": got["prefix"]})]


def _multi(n, per, workdir, env, *modes):
  import portpicker
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_run.py"), str(n),
                             str(i), str(port), str(per), str(workdir), *modes], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(HERE)) for i in range(n)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  line = [l for l in outs[0][0].splitlines() if l.startswith("RESULT ")][-1]
  assert not any("RESULT" in o for o, _ in outs[1:])  # process 0 reports
  return json.loads(line[len("RESULT "):])


def _assert_same_eval(got, ref, questions=8):
  """The same scores, and per question the same gold NLL (question ids in order: a gather that
  put one process's values on another's questions fails)."""
  strip = lambda ev: {k: ({m: x for m, x in v.items() if m != "gold_nll"}  # noqa: E731
                          if isinstance(v, dict) else v) for k, v in ev.items()}
  assert strip(got["eval"]) == strip(ref["eval"])
  rows = [k for k, v in ref["eval"].items() if isinstance(v, dict)]
  assert rows and set(got["nll"]) == set(ref["nll"]) == set(rows)
  for k in rows:
    np.testing.assert_allclose(got["eval"][k]["gold_nll"], ref["eval"][k]["gold_nll"], rtol=1e-5)
    assert list(got["nll"][k]) == list(ref["nll"][k]) and len(ref["nll"][k]) == questions
    ids = list(ref["nll"][k])
    assert len({round(ref["nll"][k][i], 4) for i in ids}) > 1  # questions differ: order matters
    np.testing.assert_allclose([got["nll"][k][i] for i in ids], [ref["nll"][k][i] for i in ids],
                               rtol=1e-5)


def _one(wd, env, *modes):
  p = subprocess.run([sys.executable, os.path.join(HERE, "sharded_run.py"), "4", "4,1,1",
                      str(wd), "eval", *modes], env=env, capture_output=True, text=True,
                     timeout=600, cwd=os.path.dirname(HERE))
  assert p.returncode == 0, p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):]), _trained(str(wd))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_cache):
  return _one(tmp_path_factory.mktemp("one"), {**os.environ, "TAPPER_JAX_CACHE": model_cache})


@pytest.mark.parametrize("n,per", [(2, 2), (4, 1)])
def test_processes_train_like_one_process(n, per, one_process, tmp_path, model_cache):
  ref, ref_params = one_process
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  got = _multi(n, per, tmp_path / "run", env)
  assert got["processes"] == n and got["devices"] == 4
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL)
  np.testing.assert_allclose(got["grad_norms"], ref["grad_norms"], rtol=RTOL)
  params = _trained(str(tmp_path / "run"))
  assert len(params) == len(ref_params)
  for a, b in zip(params, ref_params):
    assert_trained_close(a, b, rtol=RTOL, atol=1e-7)
  # Evaluation: each process answered and scored its share; the answers and each question's
  # gold NLL, gathered, are the one process's (NLL up to rounding: one device against four).
  assert got["eval"]["questions"] == ref["eval"]["questions"] == 8
  assert got["predictions"] == ref["predictions"] and len(got["predictions"]) == 2
  _assert_same_eval(got, ref)
  # Process 0 alone wrote the log and the summary: one line per logged step, not one per process.
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert len(f.readlines()) == len(ref["losses"])


def test_a_host_table_trains_across_processes_like_one_process(tmp_path, model_cache):
  """`table_memory = "host"`: every process keeps a copy of the table and applies the global
  batch's row updates; 2 processes x 2 devices equal 1 process x 4 (losses, final params and
  table, answers)."""
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  ref, ref_params = _one(tmp_path / "one", env, "host")
  got = _multi(2, 2, tmp_path / "run", env, "host")
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL)
  params = _trained(str(tmp_path / "run"))
  assert len(params) == len(ref_params)
  for a, b in zip(params, ref_params):
    assert_trained_close(a, b, rtol=RTOL, atol=1e-7)
  assert got["predictions"] == ref["predictions"]
  _assert_same_eval(got, ref)


@pytest.mark.parametrize("mode", ["unpad", "micro"])
def test_unpadded_or_micro_batches_train_across_processes_like_whole_ones(mode, one_process,
                                                                          tmp_path, model_cache):
  """`train_unpad` over 2 processes x 2 devices (4 groups of rows, one per batch shard, each
  process building its own), or `train_micro_batches = 2` (each micro-batch spread over the 4
  shards, each process loading its rows of both), trains as the padded one-process run with
  whole batches: the same losses, gradient norms and final values, up to the order of float
  sums."""
  ref, ref_params = one_process
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  got = _multi(2, 2, tmp_path / "run", env, mode)
  # The micro run did run micro-batches (two widths a step), the whole run none.
  assert all(len(w) == (2 if mode == "micro" else 0) for w in got["micro_widths"])
  assert ref["micro_widths"] == [[]]
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
  np.testing.assert_allclose(got["grad_norms"], ref["grad_norms"], rtol=1e-4)
  params = _trained(str(tmp_path / "run"))
  for a, b in zip(params, ref_params, strict=True):
    assert_trained_close(a, b, rtol=1e-4, atol=1e-6)
  assert got["eval"]["questions"] == ref["eval"]["questions"]


def test_per_user_loras_train_and_save_across_processes_like_one_process(tmp_path, model_cache):
  """Per-user LoRA over 2 processes x 2 devices: each user's adapter is gathered by every
  process (a collective) and saved by process 0, and the answers and gold NLL are those of
  one process with the same 4 devices."""
  from tapper_jax.training.per_user import user_dir
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  ref = _multi(1, 4, tmp_path / "one", env, "per_user")
  got = _multi(2, 2, tmp_path / "run", env, "per_user")
  assert got["examples_per_user"] == ref["examples_per_user"]
  assert len(ref["examples_per_user"]) == 2
  assert got["predictions"] == ref["predictions"]
  _assert_same_eval(got, ref, questions=2)
  for user in ref["examples_per_user"]:
    assert os.listdir(tmp_path / "run" / "adapters" / user_dir(user))
