"""Faults: a non-finite loss stops the run with the batch named and nothing bad saved; SIGTERM
saves, exits with status 75, and the same command resumes to the end."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_training import REPO, _stage2_run, synth_folder, tiny_config  # noqa: F401
from tapper_jax import models
from tapper_jax.training import faults


@pytest.mark.slow  # a training run: the default suite keeps a margin under 15 minutes
def test_a_non_finite_loss_stops_with_the_batch_named_and_no_checkpoint(synth_folder,
                                                                        model_cache, tmp_path):
  config = tiny_config()
  config.stage2.steps = 3
  llm, tok = models.load("tiny-random")
  run, ds, id_map = _stage2_run(config, synth_folder, (llm, tok))

  def poison(path, x):  # one frozen weight turned to NaN: the loss is NaN at the first step
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return jnp.full_like(x, jnp.nan) if "norm" in name and x.ndim == 1 else x
  run.frozen = jax.tree_util.tree_map_with_path(poison, run.frozen)
  ids = [f"ex{i}" for i in range(10_000)]
  with pytest.raises(faults.NonFiniteError, match=r"step 1: non-finite.*ex\d+"):
    run.fit(ds, str(tmp_path), id_map, example_ids=ids)
  info = json.loads((tmp_path / "debug" / "stage2_step1" / "info.json").read_text())
  batch = np.load(tmp_path / "debug" / "stage2_step1" / "batch.npz")
  assert info["example_ids"] == [ids[i] for i in batch["index"]]
  assert not np.isfinite(info["metrics"]["loss"])
  ckpts = tmp_path / "stage2" / "checkpoints"
  assert not ckpts.exists() or not [d for d in os.listdir(ckpts) if d.isdigit()]


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_sigterm_saves_exits_75_and_the_same_command_resumes(synth_folder, model_cache, tmp_path):
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
  cmd = [sys.executable, "-m", "tapper_jax.train",
         f"--config={os.path.join(REPO, 'configs', 'synthetic.py')}:tiny", "--workdir=run",
         "--config.stage=1", "--config.stage1.steps=400", "--config.checkpoint_every=1000",
         "--config.log_every=1", f"--config.data.folder={synth_folder}"]
  proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == faults.PREEMPTED_EXIT, err[-3000:]
  steps = sorted(int(d) for d in os.listdir(tmp_path / "run" / "stage1" / "checkpoints")
                 if d.isdigit())
  assert len(steps) == 1 and 3 <= steps[0] < 400  # saved at the step it stopped after
  done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["stages"]["1"]["steps"] == 400
  logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
  assert logged[-1] == 400 and steps[0] + 1 in logged  # resumed right after the saved step


@pytest.mark.slow
def test_kill_9_at_three_moments_then_resume_is_bit_identical(synth_folder, model_cache,
                                                               tmp_path):
  """kill -9 (no handler runs) at three points of one run, with a checkpoint every 4 steps (so
  kills also land inside saves): after every kill the newest step restores in full, and rerunning
  the same command ends with stage-2 parameters bit-identical to an uninterrupted run."""
  from test_training import _final_params
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}

  def cmd(workdir):
    return [sys.executable, "-m", "tapper_jax.train",
            f"--config={os.path.join(REPO, 'configs', 'synthetic.py')}:tiny",
            f"--workdir={workdir}", "--config.stage=2", "--config.evaluate=False",
            "--config.stage2.steps=60", "--config.checkpoint_every=4", "--config.log_every=1",
            f"--config.data.folder={synth_folder}"]

  straight = str(tmp_path / "straight")
  assert subprocess.run(cmd(straight), env=env, capture_output=True, timeout=600).returncode == 0
  killed = str(tmp_path / "killed")
  metrics = os.path.join(killed, "metrics.jsonl")
  for at in (10, 27, 45):  # logged steps after which the process dies
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics):
        with open(metrics) as f:
          lines = f.read().splitlines()
        if lines and json.loads(lines[-1])["step"] >= at:
          break
      time.sleep(0.05)
    proc.kill()  # SIGKILL
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it died mid-run, not after finishing
    saved = [int(d) for d in os.listdir(os.path.join(killed, "stage2", "checkpoints"))
             if d.isdigit()]
    assert saved and max(saved) < 60
    # Whatever the kill interrupted (a save included), the step a resume picks restores in full.
    # (A kill while Orbax deletes an old step beyond checkpoint_keep can leave that old step
    # half-deleted; it is never the newest, so no resume reads it.)
    from tapper_jax.training.checkpoint import Checkpoints
    ckpt = Checkpoints(os.path.join(killed, "stage2", "checkpoints"), keep=2)
    _final_params(killed, ckpt.latest_step())
    ckpt.close()
  assert subprocess.run(cmd(killed), env=env, capture_output=True, timeout=600).returncode == 0
  a, b = _final_params(straight, 60), _final_params(killed, 60)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_an_unwritable_or_full_workdir_fails_before_any_training(tmp_path, monkeypatch):
  import shutil
  from test_training import tiny_config as _tiny
  from tapper_jax.training.loop import train_and_evaluate
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  if os.access(ro, os.W_OK):  # running as root: permissions do not bind
    ro = tmp_path / "file_not_dir"
    ro.write_text("x")
  with pytest.raises(faults.WorkdirError, match="not writable"):
    train_and_evaluate(_tiny(), str(ro / "run"))
  real = shutil.disk_usage
  monkeypatch.setattr(shutil, "disk_usage",
                      lambda p: real(p)._replace(free=100 << 20))  # 100 MB left
  with pytest.raises(faults.WorkdirError, match=r"0\.10 GiB free"):
    train_and_evaluate(_tiny(), str(tmp_path / "run"))


_SLOW_TABLE_WRITER = """
import os, sys, time
import numpy as np
from tapper_jax.fileio import atomic_folder
root = sys.argv[1]
with atomic_folder(os.path.join(root, "v2")) as tmp:
  with open(os.path.join(tmp, "table.safetensors"), "wb") as f:
    for _ in range(10_000):  # a slow, large write: killed in the middle
      f.write(np.zeros(1 << 16, np.float32).tobytes())
      f.flush()
      time.sleep(0.01)
"""


def test_kill_9_during_a_table_write_leaves_the_previous_version(tmp_path):
  """A table version is written to a temporary folder and renamed: killed mid-write, the new
  version never appears and the previous one is still the newest, intact."""
  from tapper_jax.serving.personalizer import _versions
  root = tmp_path / "tables"
  (root / "v1").mkdir(parents=True)
  (root / "v1" / "table.safetensors").write_bytes(b"previous")
  proc = subprocess.Popen([sys.executable, "-c", _SLOW_TABLE_WRITER, str(root)],
                          env={**os.environ, "PYTHONPATH": REPO})
  deadline = time.time() + 120
  while time.time() < deadline:  # wait until the write is under way
    tmp = [d for d in os.listdir(root) if d.startswith(".tmp-")]
    if tmp and os.listdir(root / tmp[0]) and os.path.getsize(root / tmp[0] / "table.safetensors"):
      break
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert _versions(str(root)) == [1]  # no partial v2 is ever picked up
  assert (root / "v1" / "table.safetensors").read_bytes() == b"previous"
