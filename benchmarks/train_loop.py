"""The real training loop against its bare step, per real token.

The loop is `StageRun.fit` as `train_and_evaluate` runs it (grain input pipeline, history
fields, host-to-device, step, logging, checkpoints) on a real task. Every iteration ends in a
host sync (the finite check), so the time between two iterations is that iteration's whole
cost. Iterations whose batch shape is new (a compilation) are left out. The bare step is the
same compiled step called again and again on one batch of each shape the loop used, all of
whose tokens are counted, and the loop's time per *real* token (attention mask + prefix) is
compared with it: padding, the input pipeline, logging and checkpoints are what the ratio
charges the loop for. Settings (`--settings`): the full budget (no trim), the trim to a
multiple of 16, the trim after grouping batches by length, and any of them with the per-token
layers run on real tokens alone (`_unpadN`, `config.train_unpad`) or with each batch run as M
micro-batches of rows sorted by length, each cut to its own longest row (`_microM`,
`config.train_micro_batches`). The bare step is always the whole padded batch (no unpadding,
no micro-batches): both are ways the loop avoids paying for padding.

  python benchmarks/train_loop.py --offline=/work/offline --task=huffpost_2N \\
      --backbone=bench_out/quality/runs/huffpost_2N_seed0/stage1/backbone --steps=24
"""

import json
import os
import platform
import re
import tempfile
import time

from absl import app, flags

from _common import median_time

_OFFLINE = flags.DEFINE_string("offline", None, "Folder of offline tasks (data/build_offline).")
_TASK = flags.DEFINE_string("task", "huffpost_2N", "An offline task (configs/offline.py).")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Registry name or random:SHAPE.")
_BACKBONE = flags.DEFINE_string("backbone", "", "A stage-1 backbone folder (empty: the model).")
_STEPS = flags.DEFINE_integer("steps", 24, "Loop steps per setting.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Bare-step timings per shape (median).")
_SETTINGS = flags.DEFINE_list("settings", "full,trim16,trim16_grouped",
                              "Each 'full' (no trim), 'trimB' (the token axis cut to a multiple "
                              "of B) or 'trimB_grouped[G]' (after sorting windows of G batches "
                              "by length; G defaults to 8), optionally ending in '_unpadN' (the "
                              "per-token layers on real tokens, rounded up to a multiple of N).")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for train_loop_TASK.json.")


def setting(name: str) -> tuple[int, int, int, int]:
  """A setting's (train_bucket, train_length_groups, train_unpad, train_micro_batches), e.g.
  'trim8_grouped50' -> (8, 50, 0, 1), 'full_unpad64' -> (0, 0, 64, 1), 'trim16_micro2' ->
  (16, 0, 0, 2)."""
  m = re.fullmatch(r"(?:full|trim(\d+)(_grouped(\d*))?)(?:_unpad(\d+)|_micro(\d+))?", name)
  if not m or (m[4] is not None and int(m[4]) <= 0) or (m[5] is not None and int(m[5]) < 2):
    raise ValueError(f"--settings: {name!r} is not full, trimB or trimB_grouped[G], with an "
                     "optional _unpadN (N > 0) or _microM (M >= 2)")
  return (int(m[1] or 0), int(m[3] or 8) if m[2] else 0, int(m[4] or 0), int(m[5] or 1))


class _Recorder:
  """Wraps the dataset: records each batch's width and real tokens, and the time of every
  Logger.step call (one per loop iteration)."""

  def __init__(self, ds):
    self.ds, self.batches, self.input_s = ds, [], []

  def __iter__(self):
    rec, it = self, iter(self.ds)

    class It:
      def __next__(self):
        t = time.perf_counter()
        b = next(it)
        rec.input_s.append(time.perf_counter() - t)
        rec.batches.append(b)
        return b

      def get_state(self):
        return it.get_state()

      def set_state(self, s):
        it.set_state(s)
    return It()


def run_setting(name, config, workdir, llm, tok, plan, recorder_times):
  import jax
  import numpy as np
  from tapper_jax.training import examples as ex
  from tapper_jax.training import setup
  from tapper_jax.training import loop
  p = plan
  (config.train_bucket, config.train_length_groups, config.train_unpad,
   config.train_micro_batches) = setting(name)
  prompts = loop.prompt_format(config, tok)
  examples = p.method.prompts(p.stage2, p, tok, prompts)
  ev = p.method.prompts(p.evaluate, p, tok, prompts)
  id_map = {u: i for i, u in enumerate(p.users)}
  mesh = setup.make_mesh(config)
  fields = p.method.fields(examples, p, tok, llm, id_map, slots_from=[ev])
  run = loop.StageRun(2, llm, config, mesh, setup.table_rows(len(p.users), mesh, config),
                      config.stage2.steps)
  ds = _Recorder(ex.train_dataset(examples, prompts, config, config.stage2, seed=config.seed,
                                  history=fields, mesh=mesh))
  recorder_times.clear()
  t0 = time.perf_counter()
  state = run.fit(ds, workdir, id_map)
  loop_s = time.perf_counter() - t0
  times = list(recorder_times)
  final_s = t0 + loop_s - times[-1]  # after the last iteration: the final checkpoint
  prefix = config.stage2.prefix_len
  seen, kept_s, kept_real, kept_padded, widths, input_s = set(), 0.0, 0, 0, [], 0.0
  compile_s = 0.0
  for i, b in enumerate(ds.batches[: len(times)]):
    w = b["input_ids"].shape[1]
    micro = tuple(int(x) for x in b["micro"]) if "micro" in b else (w,)
    # What the step compiles for: the width, the unpadded room, the micro-batch widths.
    shape = (w, b["unpad"].shape[1] if "unpad" in b else 0, micro)
    dt = times[i] - (times[i - 1] if i else t0)
    if shape in seen:  # compiled already: a steady-state iteration
      kept_s += dt
      input_s += ds.input_s[i]
      kept_real += int(b["attention_mask"].sum()) + len(b["input_ids"]) * prefix
      kept_padded += len(b["input_ids"]) // len(micro) * sum(x + prefix for x in micro)
      widths.append(w)
    else:
      compile_s += dt
    seen.add(shape)
  kept_s += final_s
  # The bare step: the same compiled function, one batch per width, every token counted.
  holder = {"state": state}
  bare = {}
  for w in sorted(set(widths)):
    host = next(b for b in ds.batches if b["input_ids"].shape[1] == w)
    batch = setup.put_batch({k: v for k, v in host.items()
                             if k not in loop.HOST_ONLY + ("unpad",)}, mesh, config)  # whole
    fn = run.step_fn(batch)

    def step():
      with run.rules(), jax.set_mesh(mesh):
        holder["state"], m = fn(holder["state"], run.frozen, batch)
      jax.block_until_ready(m["loss"])
    bare[w] = median_time(step, _REPEATS.value) / (host["input_ids"].size
                                                    + len(host["input_ids"]) * prefix)
  bare_per_token = float(np.mean([bare[w] for w in widths])) if widths else float("nan")
  loop_per_real = kept_s / max(kept_real, 1)
  return {"setting": name, "bucket": config.train_bucket, "groups": config.train_length_groups,
          "unpad": config.train_unpad, "micro_batches": config.train_micro_batches,
          "loop_s": loop_s, "steady_steps": len(widths), "widths": sorted(set(widths)),
          "compiled_shapes": len(seen), "compile_steps_s": compile_s,
          "real_token_share": kept_real / max(kept_padded, 1),
          "loop_s_per_step": kept_s / max(len(widths), 1),
          "input_s_per_step": input_s / max(len(widths), 1),  # waiting on the input pipeline
          "final_checkpoint_s": final_s,
          "loop_us_per_real_token": 1e6 * loop_per_real,
          "bare_us_per_token": 1e6 * bare_per_token,
          "ratio": loop_per_real / bare_per_token,
          # The same per computed token (padding included): what the loop's machinery (input,
          # logging, checkpoints) costs beyond the step; ratio / slot_ratio is padding's share.
          "slot_ratio": kept_s / max(kept_padded, 1) / bare_per_token}


def main(argv):
  del argv
  for name in _SETTINGS.value:  # a misspelt setting fails before any model loads
    setting(name)
  if len(set(_SETTINGS.value)) < len(_SETTINGS.value):  # each trains in its own workdir
    raise ValueError("--settings: each setting once (run the benchmark again to repeat one)")
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "configs"))
  import offline as offline_config
  from tapper_jax import models
  from tapper_jax.training import logger as logger_lib
  from tapper_jax.training import loop
  times = []

  class TimedLogger(logger_lib.Logger):
    def step(self, *a, **kw):
      super().step(*a, **kw)
      times.append(time.perf_counter())
  loop.Logger = TimedLogger

  config = offline_config.get_config(_TASK.value)
  config.data.folder = os.path.join(_OFFLINE.value, _TASK.value)
  config.model.name = _MODEL.value
  config.stage2.steps, config.stage2.batch_size = _STEPS.value, _BATCH.value
  config.evaluate, config.progress, config.plots = False, False, False
  if _BACKBONE.value:
    llm = models.load_pretrained(_BACKBONE.value)
    tok = models.Tokenizer.from_pretrained(_BACKBONE.value)
  else:
    llm, tok = models.load(_MODEL.value)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    p = loop.plan(config, tmp)
    for name in _SETTINGS.value:
      r = run_setting(name, config, os.path.join(tmp, name), llm, tok, p, times)
      rows.append(r)
      print(json.dumps(r), flush=True)
  print(f"\nStage-2 loop vs bare step, {_TASK.value}, {_MODEL.value}, batch {_BATCH.value}, "
        f"{_STEPS.value} steps, {platform.machine()}, {os.cpu_count()} cores")
  print("| setting | real tokens | shapes (s) | s/step (loop) | input s/step | "
        "us/real token (loop) | us/token (bare) | loop / bare | per computed token |\n"
        "|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['setting']} | {100 * r['real_token_share']:.0f}% | {r['compiled_shapes']} "
          f"({r['compile_steps_s']:.0f}) | {r['loop_s_per_step']:.2f} | "
          f"{r['input_s_per_step']:.3f} | "
          f"{r['loop_us_per_real_token']:.0f} | {r['bare_us_per_token']:.0f} | "
          f"**{r['ratio']:.2f}x** | {r['slot_ratio']:.2f}x |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous, slug
  stem = os.path.join(_OUT.value, f"train_loop_{slug(_TASK.value)}")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"task": _TASK.value, "model": _MODEL.value, "backbone": _BACKBONE.value,
               "steps": _STEPS.value, "batch": _BATCH.value, "machine": platform.machine(),
               "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  flags.mark_flag_as_required("offline")
  app.run(main)
