"""LoRA on the attention projections of the frozen LLM: attach, merge, and list.

A is initialised as peft does (torch's kaiming_uniform_ with a = sqrt(5) on A's [r, in] weight:
U(-1/sqrt(in), 1/sqrt(in)), std ~0.024 at in = 576) and B at zero, so an attached LoRA leaves
the output unchanged and the paper's learning rates transfer: an N(0, 1/r) A is 5-28x larger and
multiplies the effective step of B under Adam by as much. Factors are stacked over
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
    bound = 1.0 / d_in ** 0.5  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3), bound sqrt(3)*gain/sqrt(in)
    mod.lora_a = nnx.LoRAParam(
        jax.random.uniform(k, (n, d_in, rank), jnp.float32, -bound, bound).astype(
            mod.kernel.get_value().dtype),
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
