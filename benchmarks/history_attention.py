"""Whole-history temporal attention -> P_q: our jitted streaming softmax against the same
computation in PyTorch (`serving.torch_tapper.TorchTapper.prefix`, eager), same run.

The paper reports 1.04 ms for attention over 1,000 records on an A800. Both sides compute P_q
(score MLP over [z_q; z_j; z_q - z_j; z_q * z_j], both decays, softmax over the whole history,
the weighted sum, the projection to L x D) for `--records` real records padded to a multiple of
the chunk, for each batch size and width; ours at several chunk sizes. Median of `--repeats`
calls, each ended by a device sync. Each side in its own process.

  python benchmarks/history_attention.py --records=1000 --batches=1,32 --widths=576,2048
"""

import json
import os
import platform
import subprocess
import sys

from absl import app, flags

from _common import median_time

_RECORDS = flags.DEFINE_integer("records", 1000, "Real history records per row.")
_BATCHES = flags.DEFINE_list("batches", ["1", "32"], "Batch sizes.")
_WIDTHS = flags.DEFINE_list("widths", ["576", "2048"], "Model widths D (SmolLM2-135M, 1B).")
_CHUNKS = flags.DEFINE_list("chunks", ["64", "256", "1024"], "Our chunk sizes.")
_PREFIX = flags.DEFINE_integer("prefix", 8, "L prefix tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls (median) after warm-up.")
_SIDE = flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Internal.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for history_attention.json.")



def _slots(chunk):
  return -(-_RECORDS.value // chunk) * chunk


def _data(b, d, h, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  valid = np.zeros((b, h), bool)
  valid[:, : _RECORDS.value] = True
  return (rng.normal(0, 0.02, (b, d)).astype(np.float32),
          rng.normal(0, 0.02, (b, h, d)).astype(np.float32),
          rng.integers(0, 2000, (b, h)).astype(np.float32), valid)


def side_jax():
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from tapper_jax.tapper.attention import TemporalAttention
  res = {}
  for d in map(int, _WIDTHS.value):
    for b in map(int, _BATCHES.value):
      for c in map(int, _CHUNKS.value):
        att = TemporalAttention(d, _PREFIX.value, chunk=c, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(att)
        fn = jax.jit(lambda s, *x: nnx.merge(graphdef, s)(*x))
        args = [jnp.asarray(x) for x in _data(b, d, _slots(c))]
        out = {}

        def call():
          out["p"] = fn(state, *args)

        sec = median_time(call, _REPEATS.value, lambda: jax.block_until_ready(out["p"]), warmup=3)
        res[f"{d}/{b}/{c}"] = sec * 1e3
  return {"ms": res, "device": str(jax.devices()[0].device_kind)}


def side_torch():
  import torch
  from tapper_jax.serving.torch_tapper import TorchTapper
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  res = {}
  for d in map(int, _WIDTHS.value):
    meta = {"users": [], "prefix_len": _PREFIX.value, "hidden_size": d, "user_prefix": False,
            "query_prefix": True, "time_decay": True, "order_decay": True, "gelu": "exact"}
    zeros = {"score_in.weight": torch.randn(d, 4 * d) * 0.02, "score_in.bias": torch.zeros(d),
             "score_out.weight": torch.randn(1, d) * 0.02, "score_out.bias": torch.zeros(1),
             "proj.weight": torch.randn(_PREFIX.value * d, d) * 0.02,
             "proj.bias": torch.zeros(_PREFIX.value * d),
             "lambda_t": torch.tensor([0.01]), "lambda_o": torch.tensor([0.01])}
    model = TorchTapper(None, None, meta, zeros).to(dev).eval()
    for b in map(int, _BATCHES.value):
      zq, hz, age, valid = (torch.from_numpy(x).to(dev) for x in _data(b, d, _RECORDS.value))
      row = torch.full((b,), -1, device=dev)
      sec = median_time(lambda: model.prefix(row, zq, hz, age, valid), _REPEATS.value, sync, warmup=3)
      res[f"{d}/{b}"] = sec * 1e3
  return {"ms": res, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}


def main(argv):
  del argv
  if _SIDE.value != "both":
    print("RESULT " + json.dumps(side_jax() if _SIDE.value == "jax" else side_torch()))
    return
  results = {}
  for side in ("jax", "torch"):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), f"--side={side}"] +
                       [a for a in sys.argv[1:] if not a.startswith("--side")],
                       capture_output=True, text=True)
    if p.returncode:
      raise SystemExit(f"{side} side failed:\n{p.stderr[-4000:]}")
    results[side] = json.loads([l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
  rows = []
  for d in map(int, _WIDTHS.value):
    for b in map(int, _BATCHES.value):
      t = results["torch"]["ms"][f"{d}/{b}"]
      ours = {int(c): results["jax"]["ms"][f"{d}/{b}/{c}"] for c in _CHUNKS.value}
      best = min(ours, key=ours.get)
      rows.append({"width": d, "batch": b, "torch_ms": t, "ours_ms": ours, "best_chunk": best,
                   "ratio": t / ours[best]})
  print(f"\nWhole-history attention -> P_q over {_RECORDS.value} records, L={_PREFIX.value}; "
        f"ours {results['jax']['device']}, torch {results['torch']['device']}; "
        f"{platform.machine()} {os.cpu_count()} cpus")
  chunks = [int(c) for c in _CHUNKS.value]
  print("| D | batch | " + " | ".join(f"ours chunk {c} ms" for c in chunks) +
        " | torch eager ms | ratio (best) |")
  print("|---|---|" + "---|" * len(chunks) + "---|---|")
  for r in rows:
    print(f"| {r['width']} | {r['batch']} | " +
          " | ".join(f"{r['ours_ms'][c]:.3f}" for c in chunks) +
          f" | {r['torch_ms']:.3f} | **{r['ratio']:.2f}x** |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous
  stem = os.path.join(_OUT.value, "history_attention")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"records": _RECORDS.value, "prefix": _PREFIX.value, "jax_device":
               results["jax"]["device"], "torch_device": results["torch"]["device"],
               "machine": f"{platform.machine()} {os.cpu_count()} cpus", "rows": rows}, f,
              indent=2)


if __name__ == "__main__":
  app.run(main)
