"""Hugging Face checkpoint folders <-> our parameter tree, torch-free.

The map is near-identity: our path joined by dots is the HF name, with `kernel`/`embedding`
read as `weight` (kernels transposed), and the stacked `model.layers` axis unrolled into
`model.layers.{i}`.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax.models.config import LlamaConfig
from tapper_jax.fileio import atomic_folder
from tapper_jax.models.llama import LlamaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class WeightsError(ValueError):
  """A weight file that cannot be used; the message names the file and tensor."""


LLAMA_STACK = ("model", "layers")  # our stacked-layer prefix; HF's model.layers.{i}


def hf_path(path, stack: tuple[str, str] = LLAMA_STACK) -> tuple[str, bool]:
  """Our module/variable path -> (HF dotted path, '{i}' inserted after `stack`; stacked?)."""
  parts = [str(p) for p in path]
  stacked = tuple(parts[:2]) == stack
  return ".".join(parts[:2] + (["{i}"] if stacked else []) + parts[2:]), stacked


def hf_name(path: tuple[str, ...], stack: tuple[str, str] = LLAMA_STACK
            ) -> tuple[str, bool, bool]:
  """Our variable path -> (HF name template with '{i}' for stacked layers, stacked, transposed)."""
  parts = [str(p) for p in path]
  leaf = parts[-1]
  transposed = leaf == "kernel"
  parts[-1] = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
  name, stacked = hf_path(parts, stack)
  return name, stacked, transposed


def _abstract_model(cfg: LlamaConfig):
  return nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))


def _weight_files(folder: str) -> dict[str, str]:
  """HF tensor name -> file holding it (single file or sharded index)."""
  single, index = os.path.join(folder, SINGLE_FILE), os.path.join(folder, INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
      raise WeightsError(f"{index}: not a valid safetensors index (field 'weight_map'): {e}") from e
    return {k: os.path.join(folder, v) for k, v in weight_map.items()}
  if os.path.isfile(single):
    from safetensors import safe_open
    try:
      with safe_open(single, framework="flax") as f:
        return {k: single for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers
      raise WeightsError(f"{single}: cannot read safetensors header ({e})") from e
  raise WeightsError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


class _Reader:
  """Reads HF tensors lazily, one open handle per shard, as float32 numpy (bf16 included)."""

  def __init__(self, folder: str):
    self.files = _weight_files(folder)
    self._handles: dict[str, object] = {}

  def get(self, name: str, expected_shape: tuple[int, ...], what: str) -> np.ndarray:
    from safetensors import safe_open
    file = self.files.get(name)
    if file is None:
      some = next(iter(set(self.files.values())), "(no weight file)")
      raise WeightsError(f"{some}: tensor {name!r} missing ({what})")
    try:
      if file not in self._handles:
        if not os.path.isfile(file):
          raise WeightsError(f"{file}: missing (named by {INDEX_FILE} for tensor {name!r})")
        self._handles[file] = safe_open(file, framework="flax")
      arr = np.asarray(self._handles[file].get_tensor(name), dtype=np.float32)
    except WeightsError:
      raise
    except Exception as e:
      raise WeightsError(f"{file}: cannot read tensor {name!r} ({e})") from e
    if arr.shape != tuple(expected_shape):
      raise WeightsError(f"{file}: tensor {name!r} has shape {arr.shape}, config.json expects "
                         f"{tuple(expected_shape)}")
    return arr


def fill_from_hf(abstract_model, folder: str, name_fn, dtype):
  """`abstract_model` (from nnx.eval_shape) with every variable read from the HF folder.

  name_fn(path) -> (HF name, with '{i}' for a stacked layer axis; stacked; transposed).
  """
  graphdef, abstract = nnx.split(abstract_model)
  reader = _Reader(folder)

  def fill(path, var):
    name, stacked, transposed = name_fn(path)
    shape = var.get_value().shape
    per = shape[1:] if stacked else shape
    hf_shape = per[::-1] if transposed else per
    if stacked:
      arrs = [reader.get(name.format(i=i), hf_shape, f"layer {i}") for i in range(shape[0])]
      arr = np.stack([a.T if transposed else a for a in arrs])
    else:
      arr = reader.get(name, hf_shape, "")
      arr = arr.T if transposed else arr
    return var.replace(value=jnp.asarray(arr, dtype=dtype))

  state = jax.tree_util.tree_map_with_path(
      lambda p, v: fill(tuple(getattr(k, "key", getattr(k, "name", k)) for k in p), v),
      abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def load_pretrained(folder: str, *, param_dtype: str = "float32", dtype: str = "float32",
                    config: LlamaConfig | None = None, attention: str = "einsum",
                    scan_unroll: int = 1) -> LlamaForCausalLM:
  """Builds our model from an HF folder (config.json + safetensors), host-side, torch-free."""
  cfg = config or LlamaConfig.from_pretrained(folder)
  cfg = cfg.replace(param_dtype=param_dtype, dtype=dtype, attention=attention,
                    scan_unroll=scan_unroll)
  return fill_from_hf(_abstract_model(cfg), folder, hf_name, cfg.jnp_param_dtype)


def iter_hf_tensors(model: LlamaForCausalLM) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, float32 [out, in]-layout array) for every frozen weight; LoRA must be merged first."""
  if list(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
    raise ValueError("model carries LoRA factors: merge them (models.lora.merge_lora) before export")
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, stacked, transposed = hf_name(tuple(path))
    arr = np.asarray(jax.device_get(var.get_value()), dtype=np.float32)
    if stacked:
      for i in range(arr.shape[0]):
        yield name.format(i=i), np.ascontiguousarray(arr[i].T if transposed else arr[i])
    else:
      yield name, np.ascontiguousarray(arr.T if transposed else arr)


def save_pretrained(model: LlamaForCausalLM, folder: str, extra_files: dict[str, str] | None = None):
  """Writes an HF folder (config.json, model.safetensors, plus `extra_files` name -> text).

  Written to a temp folder and renamed: an existing folder is never overwritten.
  """
  from safetensors.numpy import save_file
  with atomic_folder(folder) as tmp:
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(model.config.to_hf_dict(), f, indent=2)
    save_file(dict(iter_hf_tensors(model)), os.path.join(tmp, SINGLE_FILE), metadata={"format": "pt"})
    for name, text in (extra_files or {}).items():
      with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
        f.write(text)
