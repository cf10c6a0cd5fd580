"""Helper for test_multiprocess: one of N JAX processes on 127.0.0.1 (CPU, gloo collectives),
each with its own fake devices, training the same stage-2 run as `sharded_run.py`.

  python multiprocess_run.py NUM_PROCESSES PROCESS_ID PORT DEVICES_PER_PROCESS WORKDIR [host]
(`host`: the prefix table in host memory, one copy per process.)
Process 0 prints RESULT + JSON (losses, grad norms, final trainable checksum).
"""

import json
import os
import sys

n, pid, port, per, workdir = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                              int(sys.argv[4]), sys.argv[5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={per}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))

from tapper_jax.training import distributed  # noqa: E402

distributed.initialize(coordinator=f"127.0.0.1:{port}", num_processes=n, process_id=pid)

import jax  # noqa: E402

import synthetic  # noqa: E402
from tapper_jax.training import evaluation  # noqa: E402
from tapper_jax.training.defaults import with_method  # noqa: E402
from tapper_jax.training.loop import train_and_evaluate  # noqa: E402

assert jax.process_count() == n and jax.device_count() == n * per
c = synthetic.get_config("tiny")
c.stage = "2"
c.data.synthetic.num_users = 8
c.data.eval_max_examples = 0
c.evaluate = True  # every process answers its share; process 0 writes the predictions
c.eval_nll = True  # each row's gold NLL too: the processes split it as the answers
c.stage2.steps = 3
c.stage2.batch_size = 8
c.eval_batch_size = 8
c.stage2.bridge_dropout = 0.0
c.mesh.shape = (-1, 1, 1)
if "per_user" in sys.argv[6:]:  # a LoRA per user, each saved by process 0 alone
  with_method(c, "per_user_lora")
  c.per_user.max_users, c.per_user.steps = 2, 2
  c.mesh.shape = (1, -1, 1)  # FSDP: weights span both processes, so gathering is a collective
c.stage2.table_memory = "host" if "host" in sys.argv[6:] else "device"
c.train_unpad = 16 if "unpad" in sys.argv[6:] else 0  # each of the 4 batch shards its group
c.train_micro_batches = 2 if "micro" in sys.argv[6:] else 1  # each spread over the 4 shards
summary = train_and_evaluate(c, workdir)
preds, nll = {}, {}
for name, path in summary.get("predictions", {}).items():
  if jax.process_index() == 0:
    with open(path, encoding="utf-8") as f:
      preds[name] = json.load(f)
    with open(evaluation.nll_path(path), encoding="utf-8") as f:
      nll[name] = json.load(f)
s2 = summary["stages"]["2"]
if jax.process_index() == 0:
  print("RESULT " + json.dumps({"eval": summary["eval"], "predictions": preds, "nll": nll,
                                "losses": [r["loss"] for r in s2.get("log", [])],
                                "grad_norms": [r["grad_norm"] for r in s2.get("log", [])],
                                "micro_widths": s2.get("micro_widths"),
                                "examples_per_user": s2.get("examples_per_user"),
                                "processes": jax.process_count(), "devices": jax.device_count()}))
