"""The projections of one SmolLM2 train step as plain matmuls: XLA:CPU against PyTorch, fp32 and
bf16, same shapes, same process, same threads. It answers one question about the CPU levers of
the train step: does bf16 compute make our matmuls faster on this machine (as it does PyTorch's
where oneDNN reaches AMX or AVX-512 BF16)?

Shapes: M = batch x (prompt + prefix) tokens; (K, N) = each projection of a decoder layer.

  python benchmarks/cpu_matmul.py --tokens=1088 --out=bench_out
"""

import json
import os
import platform

from absl import app, flags

from _common import median_time

_TOKENS = flags.DEFINE_integer("tokens", 8 * 136, "M: rows of the activations (batch x length).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per case (median).")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for cpu_matmul.json.")

# SmolLM2-135M: hidden 576, 9 query heads and 3 key/value heads of 64, MLP 1536.
PROJECTIONS = {"q/o 576x576": (576, 576), "k/v 576x192": (576, 192),
               "gate/up 576x1536": (576, 1536), "down 1536x576": (1536, 576)}


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags_line = next((l for l in f if l.startswith("flags")), "")
  except OSError:
    return "?"
  have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags_line]
  return " ".join(have) or "none of avx512f/avx512_bf16/amx_bf16"


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  m = _TOKENS.value
  rng = np.random.default_rng(0)
  rows = []
  for name, (k, n) in PROJECTIONS.items():
    x, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    row = {"projection": name, "m": m, "k": k, "n": n}
    for dtype in ("float32", "bfloat16"):
      jd, td = jnp.dtype(dtype), getattr(torch, dtype)
      xj, wj = jnp.asarray(x, jd), jnp.asarray(w, jd)
      f = jax.jit(lambda a, b: a @ b)
      holder = {}
      sec = median_time(lambda: holder.__setitem__("y", f(xj, wj)), _REPEATS.value,
                        lambda: holder["y"].block_until_ready())
      err_j = float(np.abs(np.asarray(holder["y"], np.float64) - exact).max())
      xt, wt = torch.from_numpy(x).to(td), torch.from_numpy(w).to(td)
      with torch.no_grad():
        sec_t = median_time(lambda: holder.__setitem__("t", xt @ wt), _REPEATS.value)
      err_t = float(np.abs(holder["t"].double().numpy() - exact).max())
      flops = 2 * m * k * n
      row[dtype] = {"xla_ms": sec * 1e3, "torch_ms": sec_t * 1e3,
                    "xla_gflops": flops / sec / 1e9, "torch_gflops": flops / sec_t / 1e9,
                    "xla_max_err": err_j, "torch_max_err": err_t}
      if dtype == "float32":  # numpy's BLAS called from inside a jitted function
        cb = jax.jit(lambda a, b: jax.pure_callback(
            np.matmul, jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), a.dtype), a, b))
        sec_c = median_time(lambda: holder.__setitem__("c", cb(xj, wj)), _REPEATS.value,
                            lambda: holder["c"].block_until_ready())
        row[dtype]["callback_gflops"] = flops / sec_c / 1e9
        row[dtype]["callback_max_err"] = float(
            np.abs(np.asarray(holder["c"], np.float64) - exact).max())
    rows.append(row)
  print(f"\nMatmuls of a SmolLM2 train step, M={m}; {platform.machine()}, {os.cpu_count()} cpus "
        f"({_cpu_flags()}); jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print("| projection | XLA fp32 GFLOP/s | XLA bf16 | bf16 / fp32 | PyTorch fp32 | PyTorch bf16 "
        "| bf16 / fp32 | numpy fp32 from jit |\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    f32, b16 = r["float32"], r["bfloat16"]
    print(f"| {r['projection']} | {f32['xla_gflops']:.0f} | {b16['xla_gflops']:.0f} | "
          f"{b16['xla_gflops'] / f32['xla_gflops']:.2f}x | {f32['torch_gflops']:.0f} | "
          f"{b16['torch_gflops']:.0f} | {b16['torch_gflops'] / f32['torch_gflops']:.2f}x | "
          f"{f32['callback_gflops']:.0f} |")
  os.makedirs(_OUT.value, exist_ok=True)
  from tapper_jax.fileio import keep_previous
  stem = os.path.join(_OUT.value, "cpu_matmul")
  keep_previous(stem, (".json",))
  with open(stem + ".json", "w") as f:
    json.dump({"machine": f"{platform.machine()} {os.cpu_count()} cpus", "cpu_flags": _cpu_flags(),
               "jax": jax.__version__, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
