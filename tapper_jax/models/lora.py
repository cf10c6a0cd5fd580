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


PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def _lora_modules(model: LlamaForCausalLM) -> list[tuple[str, Linear]]:
  """(HF module path with '{i}' for the layer, module) of every Linear carrying a LoRA."""
  from tapper_jax.models.weights import hf_path
  return [(hf_path(path)[0], mod) for path, mod in nnx.iter_graph(model)
          if isinstance(mod, Linear) and mod.lora_a is not None]


def save_peft_adapter(model: LlamaForCausalLM, folder: str, *, base_model: str = "") -> None:
  """The attached LoRA as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
  that `peft.PeftModel.from_pretrained(hf_model, folder)` loads. Never overwrites `folder`."""
  import json
  import os

  import numpy as np
  from safetensors.numpy import save_file

  from tapper_jax.fileio import atomic_folder
  mods = _lora_modules(model)
  if not mods:
    raise ValueError("no LoRA attached: nothing to save")
  tensors, targets = {}, []
  for name, mod in mods:
    a = np.asarray(jax.device_get(mod.lora_a.get_value()), np.float32)  # [L, in, R]
    b = np.asarray(jax.device_get(mod.lora_b.get_value()), np.float32)  # [L, R, out]
    targets.append(name.rsplit(".", 1)[-1])
    for i in range(a.shape[0]):
      key = "base_model.model." + name.format(i=i)
      tensors[key + ".lora_A.weight"] = np.ascontiguousarray(a[i].T)  # peft: [R, in]
      tensors[key + ".lora_B.weight"] = np.ascontiguousarray(b[i].T)  # peft: [out, R]
  first = mods[0][1]
  rank = int(first.lora_a.get_value().shape[-1])
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
            "lora_alpha": first.lora_scale * rank, "lora_dropout": first.lora_dropout,
            "target_modules": sorted(set(targets)), "bias": "none", "fan_in_fan_out": False,
            "base_model_name_or_path": base_model, "inference_mode": True}
  with atomic_folder(folder) as tmp:
    with open(os.path.join(tmp, PEFT_CONFIG), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(tmp, PEFT_WEIGHTS), metadata={"format": "pt"})


def load_peft_adapter(model: LlamaForCausalLM, folder: str) -> None:
  """Attaches the LoRA of a PEFT adapter folder (ours or peft's) to `model`, in place."""
  import json
  import os

  import numpy as np
  from safetensors.numpy import load_file
  path = os.path.join(folder, PEFT_CONFIG)
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  if cfg.get("peft_type") != "LORA":
    raise ValueError(f"{path}: field 'peft_type' is {cfg.get('peft_type')!r}, expected 'LORA'")
  rank, targets = int(cfg["r"]), tuple(cfg["target_modules"])
  attach_lora(model, rank=rank, alpha=float(cfg["lora_alpha"]), targets=targets,
              key=jax.random.PRNGKey(0))
  weights = load_file(os.path.join(folder, PEFT_WEIGHTS))
  for name, mod in _lora_modules(model):
    n = mod.lora_a.get_value().shape[0]
    key = "base_model.model." + name
    try:
      a = np.stack([weights[key.format(i=i) + ".lora_A.weight"].T for i in range(n)])
      b = np.stack([weights[key.format(i=i) + ".lora_B.weight"].T for i in range(n)])
    except KeyError as e:
      raise ValueError(f"{os.path.join(folder, PEFT_WEIGHTS)}: tensor {e.args[0]!r} missing")
    if a.shape != mod.lora_a.get_value().shape or b.shape != mod.lora_b.get_value().shape:
      raise ValueError(f"{os.path.join(folder, PEFT_WEIGHTS)}: {key} has LoRA shapes {a.shape}, "
                       f"{b.shape}; the model expects {mod.lora_a.get_value().shape}, "
                       f"{mod.lora_b.get_value().shape}")
    mod.lora_a.set_value(jnp.asarray(a, mod.lora_a.get_value().dtype))
    mod.lora_b.set_value(jnp.asarray(b, mod.lora_b.get_value().dtype))
