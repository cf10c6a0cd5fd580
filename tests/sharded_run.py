"""Helper for test_sharding: `python sharded_run.py DEVICES MESH WORKDIR [sparse] [eval] [host]`
prints JSON losses (`sparse`: the row-wise table optimizer; `eval`: evaluate too, and the
predictions; `host`: the table in host memory).

XLA_FLAGS must be set before jax is imported, hence a subprocess per device count.
"""

import json
import os
import sys

devices, mesh, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import synthetic  # noqa: E402  configs/synthetic.py
from tapper_jax.training import evaluation  # noqa: E402
from tapper_jax.training.loop import train_and_evaluate  # noqa: E402

assert jax.device_count() == devices
c = synthetic.get_config("tiny")
c.stage = "2"
c.data.synthetic.num_users = 8  # 8 table rows either way: the table's init does not depend on the mesh
c.data.eval_max_examples = 0  # all 8 users are evaluated, hence trained
modes = set(sys.argv[4:])
c.evaluate = "eval" in modes  # all 8 users' questions, as multiprocess_run.py
c.eval_nll = True  # each row's gold NLL too: the reference of multiprocess_run.py's
c.stage2.steps = 3
c.stage2.batch_size = 8
c.eval_batch_size = 8
c.stage2.bridge_dropout = 0.0
c.mesh.shape = tuple(int(x) for x in mesh.split(","))
c.stage2.sparse_table = "sparse" in modes
c.stage2.table_memory = "host" if "host" in modes else "device"
c.train_micro_batches = 1  # whole batches: the reference the multi-process variants match
summary = train_and_evaluate(c, workdir)


def _predictions(summary, where=lambda path: path):
  out = {}
  for name, path in summary.get("predictions", {}).items():
    with open(where(path), encoding="utf-8") as f:
      out[name] = json.load(f)
  return out


print("RESULT " + json.dumps({"losses": [r["loss"] for r in summary["stages"]["2"]["log"]],
                              "grad_norms": [r["grad_norm"] for r in summary["stages"]["2"]["log"]],
                              "micro_widths": summary["stages"]["2"]["micro_widths"],
                              "mesh": summary["mesh"], "rows": summary["stages"]["2"]["table_rows"],
                              "table_sharding": summary["stages"]["2"]["table_sharding"],
                              "eval": summary.get("eval"), "predictions": _predictions(summary),
                              "nll": _predictions(summary, evaluation.nll_path)}))
