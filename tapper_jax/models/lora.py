"""LoRA on the attention projections of the frozen LLM: attach, merge, and list.

A = N(0, 1/r) style init (HF peft uses kaiming-uniform; either is fine because B starts at zero,
so an attached LoRA leaves the model's output unchanged until trained). Factors are stacked over
layers like the kernels they adapt: A [L, in, R], B [L, R, out].
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from tapper_jax.models.llama import Linear, LlamaForCausalLM

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _targets(model: LlamaForCausalLM, targets: Iterable[str]) -> list[Linear]:
  attn = model.model.layers.self_attn
  mlp = model.model.layers.mlp
  out = []
  for t in targets:
    mod = getattr(attn, t, None) or getattr(mlp, t, None)
    if not isinstance(mod, Linear):
      raise ValueError(f"unknown LoRA target {t!r}; choose from q_proj k_proj v_proj o_proj "
                       "gate_proj up_proj down_proj")
    out.append(mod)
  return out


def attach_lora(model: LlamaForCausalLM, *, rank: int, alpha: float, dropout: float = 0.0,
                targets: Iterable[str] = ATTENTION_TARGETS, key: jax.Array) -> None:
  """Adds fresh LoRA factors (in place) to every layer's `targets`; B = 0 so outputs are unchanged."""
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got {rank}")
  mods = _targets(model, targets)
  for mod, k in zip(mods, jax.random.split(key, len(mods))):
    if mod.lora_a is not None:
      raise ValueError("a LoRA is already attached: merge or remove it first")
    n, d_in, d_out = mod.kernel.get_value().shape
    mod.lora_a = nnx.LoRAParam(
        (jax.random.normal(k, (n, d_in, rank), jnp.float32) / rank).astype(mod.kernel.get_value().dtype),
        out_sharding=("layers", mod.kernel.get_metadata()["out_sharding"][1], "lora_rank"))
    mod.lora_b = nnx.LoRAParam(jnp.zeros((n, rank, d_out), mod.kernel.get_value().dtype),
                               out_sharding=("layers", "lora_rank",
                                               mod.kernel.get_metadata()["out_sharding"][2]))
    mod.lora_scale = float(alpha) / rank
    mod.lora_dropout = float(dropout)


def merge_lora(model: LlamaForCausalLM) -> int:
  """Folds every attached LoRA into its kernel (W += scale * A B) and removes it. Returns the count."""
  count = 0
  for _, mod in nnx.iter_graph(model):
    if isinstance(mod, Linear) and mod.lora_a is not None:
      delta = mod.lora_scale * jnp.einsum("lir,lro->lio", mod.lora_a.get_value().astype(jnp.float32),
                                          mod.lora_b.get_value().astype(jnp.float32))
      mod.kernel.set_value((mod.kernel.get_value().astype(jnp.float32) + delta).astype(mod.kernel.get_value().dtype))
      mod.lora_a, mod.lora_b, mod.lora_scale, mod.lora_dropout = None, None, 0.0, 0.0
      count += 1
  return count
