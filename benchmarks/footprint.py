"""Footprint: trainable parameters per user, shared, and in total, for each method.

  python benchmarks/footprint.py --output=bench_out/footprint

Counted from the actual parameter trees, built abstractly (`nnx.eval_shape`: shapes only, no
weights), at three backbone shapes: SmolLM2-135M (ours), Llama-3.1-8B, and Llama-2-7B (the
backbone OPPU and PER-PCS report on). Methods:
  TAP-PER   per user: one row of the prefix table (L x d). Shared: the temporal attention
            (score MLP, lambdas, projection) and the bridge LoRA (r=4 on q/k/v/o).
  PPlug     per user: nothing (a user is the embeddings of their history). Shared: the
            projector MLP and the instruction token (encoder width: all-MiniLM-L6-v2's 384).
  OPPU      per user: a LoRA (r=8 on q and v), as OPPU's per-user PEFT.
  PER-PCS   reconstructed from its public code (github.com/TamSiuhin/Per-Pcs; the paper's
            storage table could not be read offline): a shared pool of 50 sharers, each a LoRA
            (r=8 on q/k/v/o) plus a gate vector per adapted module; per user, the top-3 piece
            indices and weights per adapted module.
Bytes in fp32 and bf16. Output: OUT/footprint.md and OUT/footprint.json (earlier ones kept).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


USERS = (1, 1_000, 1_000_000)
PREFIX_LEN = 8
ENCODER_DIM = 384  # all-MiniLM-L6-v2

# Architecture shapes (HF config.json values); vocab and MLP width do not enter any count below.
SHAPES = {
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64),
    "Llama-3.1-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128),
    "Llama-2-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       head_dim=128),
}

PER_PCS = dict(sharers=50, rank=8, top_k=3)  # llama/model.py, history_anchor.py --k, README --topk


def _size(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def lora_params(cfg, rank: int, targets) -> int:
  """Trainable parameters of a LoRA of `rank` on `targets` of every layer (from the tree)."""
  import jax
  from flax import nnx
  from tapper_jax.models.llama import LlamaForCausalLM
  from tapper_jax.models.lora import attach_lora

  def build():
    m = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    attach_lora(m, rank=rank, alpha=2.0 * rank, targets=targets, key=jax.random.PRNGKey(0))
    return m
  return _size(nnx.state(nnx.eval_shape(build), nnx.LoRAParam))


def tapper_params(d: int) -> tuple[int, int]:
  """(per-user, shared module) parameters of TAP-PER's prefix module at width d."""
  from flax import nnx
  from tapper_jax.tapper.model import Tapper
  from tapper_jax.tapper.attention import ZStats
  from tapper_jax.tapper.prefix import PrefixTable
  two = nnx.eval_shape(lambda: Tapper(d, PREFIX_LEN, 2, rngs=nnx.Rngs(0)))
  one = nnx.eval_shape(lambda: Tapper(d, PREFIX_LEN, 1, rngs=nnx.Rngs(0)))
  per_user = _size(nnx.state(two, PrefixTable)) - _size(nnx.state(one, PrefixTable))
  # Trained parameters only: the fixed z statistics (ZStats) are stored, never trained.
  shared = (_size(nnx.state(one, nnx.Param)) - _size(nnx.state(one, PrefixTable))
            - _size(nnx.state(one, ZStats)))
  return per_user, shared


def pplug_params(d: int) -> int:
  from flax import nnx
  from tapper_jax.methods.pplug import PersonaPlug
  return _size(nnx.state(nnx.eval_shape(lambda: PersonaPlug(ENCODER_DIM, d, rngs=nnx.Rngs(0))),
                         nnx.Param))


def footprint() -> dict:
  from tapper_jax.models.config import LlamaConfig
  out = {}
  for name, shape in SHAPES.items():
    cfg = LlamaConfig(**shape)
    d = cfg.hidden_size
    t_user, t_module = tapper_params(d)
    bridge = lora_params(cfg, 4, ("q_proj", "k_proj", "v_proj", "o_proj"))
    rows = {
        "TAP-PER": {"per_user": t_user, "shared": t_module + bridge},
        "PPlug": {"per_user": 0, "shared": pplug_params(d)},
        "OPPU (LoRA r=8 on q, v)": {"per_user": lora_params(cfg, 8, ("q_proj", "v_proj")),
                                    "shared": 0},
    }
    qkvo = ("q_proj", "k_proj", "v_proj", "o_proj")
    gates = cfg.num_hidden_layers * (2 * d + 2 * cfg.num_attention_heads * cfg.head_dim)
    rows["PER-PCS (from its code)"] = {
        "per_user": cfg.num_hidden_layers * len(qkvo) * PER_PCS["top_k"] * 2,
        "shared": PER_PCS["sharers"] * (lora_params(cfg, PER_PCS["rank"], qkvo) + gates)}
    for r in rows.values():
      r["total"] = {str(u): r["shared"] + u * r["per_user"] for u in USERS}
    out[name] = {"rows": rows, "oppu_over_tapper_per_user":
                 rows["OPPU (LoRA r=8 on q, v)"]["per_user"] / t_user,
                 "tapper_over_perpcs_total_1k": rows["TAP-PER"]["total"]["1000"]
                 / rows["PER-PCS (from its code)"]["total"]["1000"]}
  return out


def _fmt(n: int) -> str:
  for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= div:
      return f"{n / div:.2f}{unit}"
  return str(n)


def report(res: dict) -> str:
  lines = ["Trainable parameters (counted from abstract parameter trees); bytes = parameters x 4 "
           "(fp32) or x 2 (bf16).", ""]
  for shape, r in res.items():
    lines += [f"### {shape}", "",
              "| method | per user | shared | total @1 | total @1k | total @1M | @1M fp32 | "
              "@1M bf16 |", "|---|---|---|---|---|---|---|---|"]
    for m, v in r["rows"].items():
      t = v["total"]
      lines.append(f"| {m} | {v['per_user']:,} | {v['shared']:,} | {_fmt(t['1'])} | "
                   f"{_fmt(t['1000'])} | {_fmt(t['1000000'])} | "
                   f"{t['1000000'] * 4 / 2**30:.1f} GiB | {t['1000000'] * 2 / 2**30:.1f} GiB |")
    lines += ["", f"OPPU / TAP-PER per-user parameters: {r['oppu_over_tapper_per_user']:.1f}x; "
              f"TAP-PER / PER-PCS total at 1,000 users: {r['tapper_over_perpcs_total_1k']:.1%}", ""]
  return "\n".join(lines)


def main(argv):
  del argv
  res = footprint()
  text = report(res)
  print(text)
  out = os.path.abspath(flags.FLAGS.output)
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, "footprint")
  for ext in (".md", ".json"):
    if os.path.exists(stem + ext):
      stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(stem + ext)))
      os.replace(stem + ext, f"{stem}.{stamp}{ext}")
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(res, f, indent=2)


if __name__ == "__main__":  # flags only here: tests import this module beside other benchmarks
  flags.DEFINE_string("output", os.path.join("bench_out", "footprint"), "Output folder.")
  app.run(main)
