"""On 8 fake CPU devices a (data=2, fsdp=4) mesh trains like 1 device (stage 2, 3 steps)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tables import assert_trained_close

HERE = os.path.dirname(os.path.abspath(__file__))
# Sharded reductions (the batch mean, FSDP-gathered matmuls) sum in another order than one
# device does: float32 rounding, compounded over 3 Adam steps. Measured: ~1e-6 relative.
LOSS_RTOL = 1e-4


def _run(devices, mesh, workdir, env, *extra):
  p = subprocess.run([sys.executable, os.path.join(HERE, "sharded_run.py"), str(devices), mesh,
                      str(workdir), *extra], env=env, capture_output=True, text=True, timeout=600,
                     cwd=os.path.dirname(HERE))
  assert p.returncode == 0, p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_2x4_mesh_matches_one_device(tmp_path, model_cache):
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  one = _run(1, "1,1,1", tmp_path / "one", env)
  eight = _run(8, "2,4,1", tmp_path / "eight", env)
  assert eight["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and one["rows"] == eight["rows"] == 8
  assert eight["table_sharding"] == "P(('data', 'fsdp'), None, None)"  # rows over 8 devices
  assert len(one["losses"]) == 3
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(eight["grad_norms"], one["grad_norms"], rtol=LOSS_RTOL)
  print("losses 1 device", one["losses"], "| 2x4 mesh", eight["losses"])
  # The 8-device checkpoint restores onto this process's one device, with the values training
  # gave (equal to the 1-device run's up to the same rounding as the losses).
  from tapper_jax.training.checkpoint import load_prefix_table
  t8, users8 = load_prefix_table(str(tmp_path / "eight" / "stage2" / "checkpoints"))
  t1, users1 = load_prefix_table(str(tmp_path / "one" / "stage2" / "checkpoints"))
  assert users8 == users1 and t8.shape == t1.shape
  assert_trained_close(t8, t1, rtol=LOSS_RTOL, atol=1e-7)


@pytest.mark.slow
def test_sparse_table_on_a_sharded_table_matches_one_device(tmp_path, model_cache):
  env = {**os.environ, "TAPPER_JAX_CACHE": model_cache}
  one = _run(1, "1,1,1", tmp_path / "one", env, "sparse")
  eight = _run(8, "2,4,1", tmp_path / "eight", env, "sparse")
  assert eight["table_sharding"] == "P(('data', 'fsdp'), None, None)"
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=LOSS_RTOL)
  np.testing.assert_allclose(eight["grad_norms"], one["grad_norms"], rtol=LOSS_RTOL)
