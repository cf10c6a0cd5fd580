"""Stage-2 step time and memory against the number of users: dense AdamW on the whole prefix
table, the row-wise table optimizer (`stage2.sparse_table`), and the table in host memory
(`stage2.table_memory=host`: numpy on the host, the batch's rows gathered and written back each
step), same run.

Our model at the tiny width (`--model=random:tiny` by default, so the table dominates), a
synthetic batch of B rows drawn from U users, the real train step (StageRun: LoRA, attention,
table, clip, AdamW), called as the loop calls it (`StageRun.train_step`: the batch's transfer,
and the host table's gather and write-back, included). For each U in --users and each mode:
compile, warm up, then the median of --steps timed steps. Memory: the train state's bytes on
the devices (table + its optimizer state + the rest, as placed) and on the host (the host
table and its moments). Also the computed table bytes at SmolLM2-135M and Llama-3.1-8B widths.
The goal (issue 13): a sparse step time flat in U, within 10% from 1k to 1M users.

  python benchmarks/users_scale.py --users=1000,10000,100000,1000000
"""

import json
import os
import platform

from absl import app, flags

from _common import median_time

_MODEL = flags.DEFINE_string("model", "random:tiny", "Registry name (its width sets the table's).")
_USERS = flags.DEFINE_list("users", ["1000", "10000", "100000", "1000000"], "Table rows.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_SEQ = flags.DEFINE_integer("seq", 64, "Tokens per row.")
_HISTORY = flags.DEFINE_integer("history", 16, "History records per row.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median).")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for users_scale.json.")
_SAVE = flags.DEFINE_bool("save_restore", True, "At the largest U, the host-table run saves its "
                          "table, moments and user-id map as a checkpoint (under --out) and "
                          "restores them: seconds, bytes on disk, and whether they came back equal.")

PREFIX = 8
WIDTHS = {"SmolLM2-135M": 576, "Llama-3.1-8B": 4096}


def _batch(u, vocab, d, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  b, t, h = _BATCH.value, _SEQ.value, _HISTORY.value
  return {"input_ids": rng.integers(100, vocab - 100, (b, t)).astype(np.int32),
          "attention_mask": np.ones((b, t), np.int32),
          "target_pos": np.tile(np.arange(t - 4, t, dtype=np.int32), (b, 1)),
          "target_valid": np.ones((b, 4), np.int32),
          "user_row": rng.integers(0, u, (b,)).astype(np.int32),
          "query_z": rng.normal(0, 0.02, (b, d)).astype(np.float32),
          "hist_z": rng.normal(0, 0.02, (b, h, d)).astype(np.float32),
          "hist_age": np.tile(np.arange(h, 0, -1, dtype=np.float32), (b, 1)),
          "hist_valid": np.ones((b, h), bool)}


MODES = {"dense": {}, "sparse": {"sparse_table": True}, "host": {"table_memory": "host"}}


def one(llm, u: int, mode: str, save_dir: str | None = None) -> dict:
  import jax
  from tapper_jax.training import defaults, setup
  from tapper_jax.training.loop import StageRun
  c = defaults.base_config("LaMP_2M")
  c.stage2.steps, c.stage2.warmup, c.stage2.prefix_len = 1000, 0.0, PREFIX
  c.stage2.update(MODES[mode])
  mesh = setup.make_mesh(c)
  run = StageRun(2, llm, c, mesh, u, c.stage2.steps)
  holder = {"state": run.fresh_state(), "step": 0}
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
  device_bytes = nbytes(holder["state"])
  host_bytes = run.table.nbytes if run.on_host else 0
  table_bytes = run.table.table.nbytes if run.on_host else nbytes(holder["state"]["table"])
  batch = _batch(u, llm.config.vocab_size, llm.config.hidden_size)

  def step():
    with run.rules(), jax.set_mesh(mesh):
      holder["state"], m = run.train_step(holder["state"], batch, holder["step"])
    holder["loss"], holder["step"] = m["loss"], holder["step"] + 1

  sec = median_time(step, _STEPS.value, lambda: jax.block_until_ready(holder["loss"]), warmup=2)
  out = {"seconds": sec, "state_mb": device_bytes / 2**20, "host_mb": host_bytes / 2**20,
         "table_mb": table_bytes / 2**20}
  if save_dir and run.on_host:
    out["checkpoint"] = save_and_restore(run, holder["state"], holder["step"], u, save_dir)
  del holder, run
  return out


def save_and_restore(run, state, step: int, u: int, folder: str) -> dict:
  """Saves the host table's run (device state + table, moments, last steps, a U-entry user-id
  map) with the training checkpointer, restores it into fresh host arrays, compares."""
  import shutil
  import time
  import jax
  import numpy as np
  from tapper_jax.training.checkpoint import Checkpoints
  from tapper_jax.training.host_table import HostTable
  ids = {f"user{i}": i for i in range(u)}
  ckpt = Checkpoints(folder, keep=1)
  t0 = time.perf_counter()
  ckpt.save(step, {**state, **run.table.state()}, ids, {})
  ckpt.wait()
  save_s = time.perf_counter() - t0
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
  t0 = time.perf_counter()
  got, got_ids, _ = ckpt.restore(step, run.abstract, run.state_sh,
                                 host=HostTable.empty(run.table_abstract).state())
  restore_s = time.perf_counter() - t0
  ckpt.close()
  pairs = [(jax.tree.leaves(got["table"])[0], run.table.table),
           (jax.tree.leaves(got["sparse"]["m"])[0], run.table.m),
           (jax.tree.leaves(got["sparse"]["v"])[0], run.table.v),
           (got["sparse"]["last"][...], run.table.last)]
  equal = got_ids == ids and all(np.array_equal(np.asarray(a), b) for a, b in pairs)
  equal = equal and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                        zip(jax.tree.leaves(got["params"]), jax.tree.leaves(state["params"])))
  shutil.rmtree(folder)
  return {"save_s": save_s, "restore_s": restore_s, "disk_mb": size / 2**20,
          "restored_equal": bool(equal), "rows_updated": int((run.table.last > 0).sum())}


def main(argv):
  del argv
  from tapper_jax.models import load_pretrained, registry
  llm = load_pretrained(registry.resolve(_MODEL.value))
  d = llm.config.hidden_size
  rows = []
  top = max(map(int, _USERS.value))
  for u in map(int, _USERS.value):
    r = {"users": u}
    for name in MODES:
      save = os.path.join(_OUT.value, "users_scale_ckpt") if _SAVE.value and u == top else None
      res = one(llm, u, name, save)
      if "checkpoint" in res:
        r["checkpoint"] = ck = res["checkpoint"]
        print(f"U={u:>9,} host table checkpoint: saved in {ck['save_s']:.1f} s, restored in "
              f"{ck['restore_s']:.1f} s, {ck['disk_mb']:.0f} MB on disk, equal: "
              f"{ck['restored_equal']}", flush=True)
      r.update({f"{name}_s": res["seconds"], f"{name}_state_mb": res["state_mb"]})
      r["table_mb"] = res["table_mb"]
      if name == "host":
        r["host_table_mb"] = res["host_mb"]
      print(f"U={u:>9,} {name:6} {res['seconds'] * 1e3:9.1f} ms/step  device state "
            f"{res['state_mb']:9.1f} MB  host {res['host_mb']:9.1f} MB", flush=True)
    rows.append(r)
  base = rows[0]
  for r in rows:
    for name in MODES:
      r[f"{name}_vs_1k"] = r[f"{name}_s"] / base[f"{name}_s"]
  computed = {name: {str(u): {"table_gb": u * PREFIX * w * 4 / 1e9,
                              "dense_adamw_state_gb": 3 * u * PREFIX * w * 4 / 1e9,
                              "rowwise_state_gb": (3 * u * PREFIX * w * 4 + 4 * u) / 1e9}
                     for u in map(int, _USERS.value)} for name, w in WIDTHS.items()}
  print(f"\nStage-2 step vs users, {_MODEL.value} (D={d}, L={PREFIX}), batch {_BATCH.value} x "
        f"{_SEQ.value}, {platform.machine()} {os.cpu_count()} cpus")
  print("| users | table MB | dense ms/step | x 1k | row-wise ms/step | x 1k | host table "
        "ms/step | x 1k | device state MB: dense / row-wise / host table |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['users']:,} | {r['table_mb']:.0f} | {r['dense_s'] * 1e3:.1f} | "
          f"{r['dense_vs_1k']:.2f} | {r['sparse_s'] * 1e3:.1f} | {r['sparse_vs_1k']:.2f} | "
          f"{r['host_s'] * 1e3:.1f} | {r['host_vs_1k']:.2f} | {r['dense_state_mb']:.0f} / "
          f"{r['sparse_state_mb']:.0f} / {r['host_state_mb']:.0f} |")
  if "checkpoint" in rows[-1]:
    ck = rows[-1]["checkpoint"]
    print(f"\n{rows[-1]['users']:,} users, host table + moments + id map: checkpoint saved in "
          f"{ck['save_s']:.1f} s, restored in {ck['restore_s']:.1f} s, {ck['disk_mb']:.0f} MB; "
          f"restored equal: {ck['restored_equal']}")
  top = str(top)
  print(f"\nComputed (fp32, L={PREFIX}), {int(top):,} users: " + "; ".join(
      f"{n} (D={w}): table {computed[n][top]['table_gb']:.1f} GB, with AdamW moments "
      f"{computed[n][top]['dense_adamw_state_gb']:.1f} GB" for n, w in WIDTHS.items()))
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous
  stem = os.path.join(_OUT.value, "users_scale")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"model": _MODEL.value, "width": d, "prefix": PREFIX, "batch": _BATCH.value,
               "seq": _SEQ.value, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
               "rows": rows, "computed": computed}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
