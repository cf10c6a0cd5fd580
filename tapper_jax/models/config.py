"""Llama-family architecture config, read from and written to Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from tapper_jax.errors import ConfigError  # re-exported: models.ConfigError

# model_type -> (q/k/v have bias, o has bias). Qwen2 carries q/k/v biases only; Llama's
# `attention_bias` puts a bias on all four projections.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a decoder-only Llama-family model (HF field names where they exist)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Llama-3 style scaling as sorted (key, value) pairs (hashable: the config is static model
  # data): rope_type="llama3", factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings. None for plain RoPE. `rope_scaling_dict` reads it.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  max_position_embeddings: int = 2048
  model_type: str = "llama"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  # Not architecture: how we hold and compute. Param dtype is the storage dtype of weights;
  # dtype is the matmul/activation dtype. Norms and softmax always run in float32.
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Attention without a KV cache (training, scoring): "einsum" (ours, any backend), "xla" or
  # "cudnn" (jax.nn.dot_product_attention; cudnn = fused flash attention on NVIDIA GPUs, bf16).
  # Decoding with a cache always takes the einsum path.
  attention: str = "einsum"
  # Layers per iteration of the layer scan; num_hidden_layers (or 0) unrolls it into
  # straight-line code, so that a layer's backward reads its saved activations in place
  # rather than out of [layers, ...] stacks (benchmarks/results/gpu_h200).
  scan_unroll: int = 1

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    e = self.eos_token_id
    return () if e is None else (e,) if isinstance(e, int) else tuple(e)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  # ---------------------------------------------------------------- HF interop
  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "LlamaConfig":
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(
          f"{source}: field 'model_type' = {model_type!r} (architectures={archs}) is not a supported "
          f"architecture; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
      if not isinstance(d.get(field), int) or d[field] <= 0:
        raise ConfigError(f"{source}: field {field!r} must be a positive integer, got {d.get(field)!r}")
    n_heads = d["num_attention_heads"]
    n_kv = d.get("num_key_value_heads") or n_heads
    if n_heads % n_kv:
      raise ConfigError(f"{source}: num_attention_heads={n_heads} is not a multiple of "
                        f"num_key_value_heads={n_kv}")
    head_dim = d.get("head_dim") or d["hidden_size"] // n_heads
    # transformers >= 5 writes rope settings as `rope_parameters`; 4.x as rope_theta + rope_scaling.
    rope = dict(d.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
    scaling = d.get("rope_scaling") or (rope or None)
    if scaling is not None:
      rtype = scaling.get("rope_type", scaling.get("type", "default"))
      if rtype == "default":
        scaling = None
      elif rtype != "llama3":
        raise ConfigError(f"{source}: field 'rope_scaling.rope_type' = {rtype!r} is not supported "
                          "(supported: default, llama3)")
    if model_type == "qwen2":
      qkv_bias, o_bias = True, False
    else:
      qkv_bias = o_bias = bool(d.get("attention_bias", False))
    if d.get("mlp_bias"):
      raise ConfigError(f"{source}: field 'mlp_bias' = true is not supported")
    return cls(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=head_dim,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)), rope_theta=float(theta),
        rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias, o_bias=o_bias,
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        model_type=model_type, bos_token_id=d.get("bos_token_id"),
        eos_token_id=(tuple(d["eos_token_id"]) if isinstance(d.get("eos_token_id"), list)
                      else d.get("eos_token_id")), pad_token_id=d.get("pad_token_id"))

  @classmethod
  def from_pretrained(cls, path: str, **overrides) -> "LlamaConfig":
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
      raise ConfigError(f"{f}: missing (a Hugging Face model folder needs config.json)")
    try:
      with open(f, encoding="utf-8") as fh:
        d = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConfigError(f"{f}: not valid JSON ({e})") from e
    return cls.from_hf_dict(d, source=f).replace(**overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "mistral": "MistralForCausalLM"}[self.model_type]
    d = dict(
        architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size,
        hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
        num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
        rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
        rope_scaling=self.rope_scaling_dict, tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings, hidden_act="silu",
        bos_token_id=self.bos_token_id,
        eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        pad_token_id=self.pad_token_id, torch_dtype="float32")
    if self.model_type != "qwen2":
      d["attention_bias"] = self.qkv_bias
    return d
