"""One TAP-PER stage-2 train step: ours (JAX/Flax) against the same step in PyTorch (transformers +
peft), timed in the same run, each side in its own subprocess (so peak memory is its own).

Same model (our converted SmolLM2-135M-Instruct folder, or random weights of a named shape),
same dtype (`--dtype`), same device (the GPU where there is one), same batch (B rows of T prompt +
target tokens, K of them targets, L prefix tokens, H history records), same optimizer (AdamW,
clip 0.3), same trainables (bridge LoRA r4/alpha8/dropout .05 on q/k/v/o, the temporal attention,
the projection, the user prefix table). The PyTorch step is the straightforward one: HF forward
with `labels` (logits at every position), peft LoRA, loss.backward().

  python benchmarks/train_step.py --batch=8 --seq=128 --history=32 --steps=5 --out=bench_out
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from _common import resolve_model

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct",
                             "Registry name, HF folder, or random:SHAPE (models.registry.SHAPES).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Weights and compute, both sides (trainables too).")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "xla", "cudnn"],
                               "Ours: attention implementation (LlamaConfig.attention).")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "dots"],
                           "Ours: what the backward recomputes (models.llama.remat_policy).")
_UNROLL = flags.DEFINE_integer("scan_unroll", 1, "Ours: layers per layer-scan iteration "
                                "(0: straight-line code; LlamaConfig.scan_unroll).")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_SEQ = flags.DEFINE_integer("seq", 128, "Prompt + target tokens per row (all real: no padding).")
_TARGET = flags.DEFINE_integer("target", 8, "Target tokens per row (the loss positions).")
_PREFIX = flags.DEFINE_integer("prefix", 8, "L soft prefix tokens.")
_HISTORY = flags.DEFINE_integer("history", 32, "History records per row.")
_USERS = flags.DEFINE_integer("users", 1024, "Rows of the user prefix table.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported) after 2 warm-up steps.")
_SIDE = flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Internal: one side per process.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for train_step_MODEL_DTYPE.json.")
_REAL = flags.DEFINE_float("real_share", 1.0, "Rows right-padded so that about this share of "
                           "the B x T slots are real tokens (row 0 full, the others' lengths "
                           "uniform); in (0.5, 1]. Both sides get the same rows.")
_UNPAD = flags.DEFINE_integer("unpad", 0, "Ours also times the step with config.train_unpad = "
                              "this (the per-token layers on real tokens only), interleaved with "
                              "the padded step on the same batch (0: not).")
_DROPOUT = flags.DEFINE_float("bridge_dropout", 0.05, "Bridge LoRA dropout, both sides.")
_PROFILE = flags.DEFINE_bool("profile", False, "Ours: trace 3 more steps with jax.profiler into "
                             "OUT/trace_* and print where the device time goes (trace_summary).")


def _lengths():
  """[B] real tokens per row (`--real_share` s): row 0 full, the others uniform in
  [(2s - 1) T, T], so that about s of the slots are real."""
  import numpy as np
  b, t, share = _BATCH.value, _SEQ.value, _REAL.value
  if not 0.5 < share <= 1:
    raise ValueError(f"--real_share={share}: in (0.5, 1]")
  lo = max(_TARGET.value + 1, int(round((2 * share - 1) * t)))
  lengths = np.random.default_rng(1).integers(lo, t + 1, b)
  lengths[0] = t
  return lengths


def _batch_np(vocab, d, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  b, t, k, h = _BATCH.value, _SEQ.value, _TARGET.value, _HISTORY.value
  n = _lengths()
  return {
      "input_ids": rng.integers(100, vocab - 100, (b, t)).astype(np.int32),
      "attention_mask": (np.arange(t)[None] < n[:, None]).astype(np.int32),
      "target_pos": (n[:, None] - k + np.arange(k)[None]).astype(np.int32),
      "target_valid": np.ones((b, k), np.int32),
      "user_row": rng.integers(0, _USERS.value, (b,)).astype(np.int32),
      "query_z": rng.normal(0, 0.02, (b, d)).astype(np.float32),
      "hist_z": rng.normal(0, 0.02, (b, h, d)).astype(np.float32),
      "hist_age": np.tile(np.arange(h, 0, -1, dtype=np.float32) * 2.0, (b, 1)),
      "hist_valid": np.ones((b, h), bool),
  }


def _peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time(n, *steps):
  """Median seconds of each step over n rounds (after 2 warm-up rounds), the steps called in
  turns within a round, so that a slow spell of the machine falls on all of them alike."""
  for _ in range(2):
    for step in steps:
      step()
  times = [[] for _ in steps]
  for _ in range(n):
    for step, ts in zip(steps, times):
      t = time.perf_counter()
      step()
      ts.append(time.perf_counter() - t)
  return [statistics.median(ts) for ts in times]


def side_jax(folder):
  import jax
  from tapper_jax.models import load_pretrained
  from tapper_jax.training import defaults, setup
  from tapper_jax.training.loop import StageRun
  llm = load_pretrained(folder, param_dtype=_DTYPE.value, dtype=_DTYPE.value,
                        attention=_ATTENTION.value, scan_unroll=_UNROLL.value)
  c = defaults.base_config("LaMP_2M")
  c.model.remat = _REMAT.value
  c.stage2.steps = 1000
  c.stage2.prefix_len = _PREFIX.value
  c.stage2.bridge_dropout = _DROPOUT.value
  mesh = setup.make_mesh(c)
  run = StageRun(2, llm, c, mesh, _USERS.value, c.stage2.steps)
  state = run.fresh_state()
  host = _batch_np(llm.config.vocab_size, llm.config.hidden_size)
  holder = {"state": state}

  def stepper(fields, loss_key):
    """One step on `fields` (placed once), its loss kept as holder[loss_key]."""
    batch = setup.put_batch(fields, mesh, c)
    fn = run.step_fn(batch)

    def step():
      with run.rules(), jax.set_mesh(mesh):
        holder["state"], m = fn(holder["state"], run.frozen, batch)
      jax.block_until_ready(m["loss"])
      holder[loss_key] = float(m["loss"])
    return step

  step = stepper(host, "loss")
  steps = [step]
  if _UNPAD.value:  # the same batch with room for its real tokens, timed in turns with padded
    import numpy as np
    room = -(-int(host["attention_mask"].sum()) // _UNPAD.value) * _UNPAD.value
    steps.append(stepper({**host, "unpad": np.zeros((1, room), np.int8)}, "unpad_loss"))
  t, *rest = _time(_STEPS.value, *steps)
  unpad_t = rest[0] if rest else None
  profile = _profile(step) if _PROFILE.value else None
  cfg = llm.config
  per_layer = cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim \
      + cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size + 3 * cfg.hidden_size * cfg.intermediate_size
  tokens = _BATCH.value * (_SEQ.value + _PREFIX.value)  # every slot: the padded step's work
  # Matmul FLOPs the step needs: forward 2 P T, backward 2 P T (input gradients only: the
  # backbone is frozen), over the layer weights; logits at the target positions only.
  model_flops = 4 * cfg.num_hidden_layers * per_layer * tokens \
      + 6 * cfg.hidden_size * cfg.vocab_size * _BATCH.value * _TARGET.value
  device = str(jax.devices()[0].device_kind)
  stats = jax.devices()[0].memory_stats() or {}
  return {"seconds": t, "loss": holder["loss"], "peak_rss_mb": _peak_mb(),
          "peak_device_mb": stats.get("peak_bytes_in_use", 0) / 2**20,
          "model_flops": model_flops, "achieved_tflops": model_flops / t / 1e12,
          "mfu": _mfu(model_flops / t, device), "backend": jax.default_backend(), "device": device,
          "profile": profile, "unpad_seconds": unpad_t, "unpad_loss": holder.get("unpad_loss")}


def _profile(step, n=3):
  """Traces n steps; prints and returns trace_summary's breakdown of the device time."""
  import jax
  import trace_summary
  folder = os.path.join(os.path.abspath(_OUT.value), f"trace_b{_BATCH.value}_s{_SEQ.value}")
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    for _ in range(n):
      step()
  summary = {line: trace_summary.summarize(folder, steps=n, top=40, line=line)
             for line in ("kernels", "ops")}
  for s in summary.values():
    print(trace_summary.table(s), file=sys.stderr)
  return summary


# Dense bf16 tensor-core peaks (FLOP/s) by device-kind substring, for model-FLOPs utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "H800": 989e12, "A800": 312e12}


def _mfu(flops_per_s, device):
  if _DTYPE.value != "bfloat16":
    return None
  peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
  return None if peak is None else flops_per_s / peak


def side_torch(folder):
  import torch
  from peft import LoraConfig, get_peft_model
  from transformers import AutoModelForCausalLM
  torch.manual_seed(0)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[_DTYPE.value]
  model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
  model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=_DROPOUT.value,
                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
  d, L = model.config.hidden_size, _PREFIX.value

  class Tapper(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.score = torch.nn.Sequential(torch.nn.Linear(4 * d, d), torch.nn.GELU(),
                                       torch.nn.Linear(d, 1))
      self.lambda_t = torch.nn.Parameter(torch.tensor(0.1))
      self.lambda_o = torch.nn.Parameter(torch.tensor(0.1))
      self.proj = torch.nn.Linear(d, L * d)
      self.table = torch.nn.Parameter(0.02 * torch.randn(_USERS.value, L, d))

    def forward(self, b):
      zq, hz, age, valid = b["query_z"], b["hist_z"], b["hist_age"], b["hist_valid"]
      usable = valid
      zqe = zq[:, None].expand_as(hz)
      s = self.score(torch.cat([zqe, hz, zqe - hz, zqe * hz], -1))[..., 0]
      gap = usable.flip(1).float().cumsum(1).flip(1) * usable.float()  # newest record: 1
      s = s - self.lambda_t * torch.log1p(age.clamp(min=0)) - self.lambda_o * torch.log1p(gap)
      a = torch.softmax(s.masked_fill(~usable, float("-inf")), dim=1)
      p_q = self.proj(torch.einsum("bh,bhd->bd", a, hz)).view(-1, L, d)
      return self.table[b["user_row"].long()] + p_q

  model = model.to(dev)
  tapper = Tapper().to(dev)
  nb = {k: torch.from_numpy(v).to(dev)
        for k, v in _batch_np(model.config.vocab_size, d).items()}
  labels = torch.full((_BATCH.value, L + _SEQ.value), -100, dtype=torch.long, device=dev)
  for i, n in enumerate(_lengths()):  # each row's last K real tokens
    labels[i, L + n - _TARGET.value:L + n] = nb["input_ids"][i, n - _TARGET.value:n].long()
  mask = torch.cat([torch.ones((_BATCH.value, L), dtype=torch.long, device=dev),
                    nb["attention_mask"].long()], 1)
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW([{"params": params + [p for n, p in tapper.named_parameters()
                                                if n != "table"], "lr": 1e-4},
                           {"params": [tapper.table], "lr": 1e-3}], weight_decay=0.0)
  embed = model.get_input_embeddings()
  out = {}

  def step():
    opt.zero_grad(set_to_none=True)
    x = torch.cat([tapper(nb).to(dtype), embed(nb["input_ids"].long())], 1)
    loss = model(inputs_embeds=x, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params + list(tapper.parameters()), 0.3)
    opt.step()
    out["loss"] = float(loss)

  model.train()
  (t,) = _time(_STEPS.value, step)
  return {"seconds": t, "loss": out["loss"], "peak_rss_mb": _peak_mb(),
          "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else 0,
          "threads": torch.get_num_threads(),
          "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}


def main(argv):
  del argv
  if _SIDE.value != "both":
    from tapper_jax.models import registry
    folder = registry.resolve(_MODEL.value)  # the parent wrote it
    res = side_jax(folder) if _SIDE.value == "jax" else side_torch(folder)
    print("RESULT " + json.dumps(res))
    return
  resolve_model(_MODEL.value)  # off the accelerator, before either side starts
  results = {}
  for side in ("jax", "torch"):
    args = [sys.executable, os.path.abspath(__file__), f"--side={side}"] + [
        a for a in sys.argv[1:] if not a.startswith("--side")]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode:
      raise SystemExit(f"{side} side failed:\n{p.stderr[-4000:]}")
    results[side] = json.loads([l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
  # Real tokens (prefix included) per second: with --real_share < 1 the padding is not counted.
  tokens = int(_lengths().sum()) + _BATCH.value * _PREFIX.value
  for r in results.values():
    r["tokens_per_s"] = tokens / r["seconds"]
  ratio = results["torch"]["seconds"] / results["jax"]["seconds"]
  rows = [("jax (ours)", results["jax"]), ("torch + peft", results["torch"])]
  if results["jax"].get("unpad_seconds"):
    r = results["jax"]
    # Both steps ran in one process: its peak memory is not the unpadded step's own.
    unpadded = {"seconds": r["unpad_seconds"], "loss": r["unpad_loss"], "mfu": None,
                "peak_rss_mb": float("nan"), "peak_device_mb": float("nan"),
                "tokens_per_s": tokens / r["unpad_seconds"]}
    rows.insert(1, (f"jax, unpadded ({_UNPAD.value})", unpadded))
  print(f"\nTAP-PER stage-2 train step, {_BATCH.value} x ({_SEQ.value} + {_PREFIX.value}) tokens, "
        f"{_HISTORY.value} history, {_MODEL.value}, {_DTYPE.value}, attention {_ATTENTION.value}, "
        f"remat {_REMAT.value}, "
        f"{results['jax']['device']} / {results['torch']['device']}, "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores")
  print("| side | s/step | tokens/s | MFU | peak RSS MB | peak device MB | loss |\n"
        "|---|---|---|---|---|---|---|")
  for name, r in rows:
    mfu = r.get("mfu") if name.startswith("jax") else \
        (_mfu(results["jax"]["model_flops"] / r["seconds"], r["device"]))
    r["mfu"] = mfu
    print(f"| {name} | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | "
          f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {r['peak_rss_mb']:.0f} | "
          f"{r.get('peak_device_mb', 0):.0f} | {r['loss']:.4f} |")
  print(f"| ratio (torch time / jax time) | **{ratio:.2f}x** | | | | | |")
  unpad_speedup = None
  if results["jax"].get("unpad_seconds"):
    unpad_speedup = results["jax"]["seconds"] / results["jax"]["unpad_seconds"]
    print(f"| ratio (padded / unpadded, ours) | **{unpad_speedup:.2f}x** | | | | | |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous, slug
  stem = os.path.join(_OUT.value, f"train_step_{slug(_MODEL.value)}_{_DTYPE.value}"
                      + ("" if _ATTENTION.value == "einsum" else f"_{_ATTENTION.value}")
                      + ("" if _REMAT.value == "none" else f"_remat_{_REMAT.value}")
                      + ("" if _UNROLL.value == 1 else f"_unroll{_UNROLL.value}")
                      + ("" if _REAL.value == 1 else f"_real{round(100 * _REAL.value)}")
                      + ("" if not _UNPAD.value else f"_unpad{_UNPAD.value}"))
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"batch": _BATCH.value, "seq": _SEQ.value, "target": _TARGET.value,
               "prefix": _PREFIX.value, "history": _HISTORY.value, "users": _USERS.value,
               "model": _MODEL.value, "remat": _REMAT.value, "scan_unroll": _UNROLL.value,
               "attention": _ATTENTION.value, "real_share": _REAL.value, "unpad": _UNPAD.value,
               "real_tokens": tokens,
               "dtype": _DTYPE.value, "machine": platform.machine(), "cpus": os.cpu_count(),
               "results": results, "speedup_vs_torch": ratio, "unpad_speedup": unpad_speedup},
              f, indent=2)


if __name__ == "__main__":
  app.run(main)
