"""What each lever gives the stage-2 train step's model-FLOPs utilisation (our side only).

Each variant runs `train_step.py --side=jax` in its own process (its own XLA flags, its own
device memory) on the same model; the first variant is the reference the others are compared
with, measured in the same run. MFU needs bf16 and a known GPU (train_step.PEAK_BF16).

  python benchmarks/mfu_sweep.py --model=random:llama-3.2-1b --out=bench_out
  python benchmarks/mfu_sweep.py --model=tiny-random --dtype=float32 --attention=einsum \
      --batch=2 --seq=32 --variants=base,batch2x  # CPU
"""

import json
import os
import platform
import subprocess
import sys

from absl import app, flags

from _common import resolve_model

_MODEL = flags.DEFINE_string("model", "random:llama-3.2-1b", "Registry name or random:SHAPE.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Weights and compute.")
_BATCH = flags.DEFINE_integer("batch", 32, "Rows per step (the reference).")
_SEQ = flags.DEFINE_integer("seq", 512, "Tokens per row (the reference).")
_ATTENTION = flags.DEFINE_enum("attention", "cudnn", ["einsum", "xla", "cudnn"],
                               "Attention of the reference (cudnn needs a GPU).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant.")
_VARIANTS = flags.DEFINE_list("variants", "base,batch2x,no_triton_gemm,seq2x",
                              "Of: base, batch2x, seq2x, no_triton_gemm, einsum, remat, remat_dots, "
                              "remat_dots_batch2x, unroll, unroll_dots, profile, "
                              "no_dropout, rbg.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for mfu_sweep_MODEL.json.")


def variants(batch: int, seq: int, attention: str, out: str = "bench_out"
             ) -> dict[str, tuple[list[str], dict]]:
  """name -> (train_step.py flags, extra environment)."""
  base = [f"--batch={batch}", f"--seq={seq}", f"--attention={attention}"]
  swap = lambda old, new: [new if a.startswith(old.split("=")[0]) else a for a in base]  # noqa: E731
  return {
      "base": (base, {}),
      "batch2x": (swap("--batch", f"--batch={2 * batch}"), {}),
      "seq2x": (swap("--seq", f"--seq={2 * seq}"), {}),
      "no_triton_gemm": (base, {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}),
      "einsum": (swap("--attention", "--attention=einsum"), {}),
      "remat": (base + ["--remat=full"], {}),
      "remat_dots": (base + ["--remat=dots"], {}),
      "remat_dots_batch2x": (swap("--batch", f"--batch={2 * batch}") + ["--remat=dots"], {}),
      "unroll": (base + ["--scan_unroll=0"], {}),
      "unroll_dots": (base + ["--scan_unroll=0", "--remat=dots"], {}),
      # The reference again, with 3 more steps traced: where its device time goes.
      # XLA's optimized HLO goes to OUT/hlo, to read what each traced fusion holds.
      "profile": (base + ["--profile"], {
          "XLA_FLAGS": f"--xla_dump_to={os.path.join(out, 'hlo')} --xla_dump_hlo_module_re=jit_step"}),
      # Dropout's cost: masks off (both sides would change; our side only here), and the
      # masks drawn by XLA's RngBitGenerator instead of threefry.
      "no_dropout": (base + ["--bridge_dropout=0"], {}),
      "rbg": (base, {"JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"}),
  }


def main(argv):
  del argv
  resolve_model(_MODEL.value)  # off the accelerator, before any variant starts
  table = variants(_BATCH.value, _SEQ.value, _ATTENTION.value, _OUT.value)
  here = os.path.dirname(os.path.abspath(__file__))
  rows = {}
  for name in _VARIANTS.value:
    args, env = table[name]
    cmd = [sys.executable, os.path.join(here, "train_step.py"), "--side=jax",
           f"--model={_MODEL.value}", f"--dtype={_DTYPE.value}", f"--steps={_STEPS.value}",
           "--target=8", "--history=32", f"--out={_OUT.value}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if p.returncode:
      print(f"{name}: failed\n{p.stderr[-1500:]}")
      rows[name] = {"error": p.stderr[-1500:], "args": args, "env": env}
      continue
    res = json.loads([l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    tokens = int(_flag(args, "--batch")) * (int(_flag(args, "--seq")) + 8)
    rows[name] = {**res, "args": args, "env": env, "tokens_per_s": tokens / res["seconds"]}
    print(f"{name}: {res['seconds']:.3f} s/step, MFU {_pct(res.get('mfu'))}", flush=True)
    if res.get("profile"):
      import trace_summary
      for summary in res["profile"].values():
        print(trace_summary.table(summary), flush=True)
  ref = rows.get(_VARIANTS.value[0], {})
  device = next((r["device"] for r in rows.values() if "device" in r), "?")
  print(f"\nStage-2 train step, {_MODEL.value}, {_DTYPE.value}, {device}, "
        f"{platform.machine()}, reference {_VARIANTS.value[0]}")
  print("| variant | flags | s/step | tokens/s | MFU | tokens/s vs reference |\n"
        "|---|---|---|---|---|---|")
  for name, r in rows.items():
    if "error" in r:
      print(f"| {name} | {' '.join(r['args'])} | failed | | | |")
      continue
    rel = r["tokens_per_s"] / ref["tokens_per_s"] if "tokens_per_s" in ref else float("nan")
    print(f"| {name} | {' '.join(r['args'])} {' '.join(f'{k}={v}' for k, v in r['env'].items())}"
          f" | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | {_pct(r.get('mfu'))} | {rel:.2f}x |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous, slug
  stem = os.path.join(_OUT.value, f"mfu_sweep_{slug(_MODEL.value)}_{_DTYPE.value}")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"model": _MODEL.value, "dtype": _DTYPE.value, "reference": _VARIANTS.value[0],
               "machine": platform.machine(), "variants": rows}, f, indent=2)


def _flag(args, name):
  return next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))


def _pct(x):
  return "-" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
  app.run(main)
