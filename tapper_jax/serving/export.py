"""Export a trained TAP-PER workdir for PyTorch serving.

  python -m tapper_jax.export --workdir=DIR --out=OUT

OUT/
  backbone/     the merged stage-1 backbone: a Hugging Face folder transformers'
                LlamaForCausalLM loads (weights + tokenizer files)
  bridge_lora/  the bridge LoRA as a PEFT adapter folder (peft loads it onto the backbone)
  tapper/       tapper.safetensors (the prefix table, trimmed to the trained users, and the
                temporal attention: z standardization, score MLP, lambdas, projection) and tapper.json (user-id ->
                row map, prefix length, switches, how z is embedded, the prompt format)
`tapper_jax.serving.torch_tapper.TorchTapper.from_export(OUT)` rebuilds the model on
transformers + peft and generates for a user. OUT is written to a temporary folder and renamed:
an existing OUT is refused unless `overwrite` (then the old one is moved aside, not deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from tapper_jax.data.prompts import PLAIN_SUFFIX
from tapper_jax.fileio import atomic_folder


def tapper_tensors(model, num_users: int) -> dict[str, np.ndarray]:
  """The TAP-PER module's weights as float32 numpy, torch layout ([out, in] linear weights)."""
  import jax
  t = model.tapper
  out = {}
  if t.users is not None:
    out["table"] = np.asarray(jax.device_get(t.users.table[...]), np.float32)[:num_users]
  a = t.attention
  if a is not None:
    for name in ("score_in", "score_out", "proj"):
      layer = getattr(a, name)
      out[f"{name}.weight"] = np.ascontiguousarray(np.asarray(layer.kernel[...], np.float32).T)
      out[f"{name}.bias"] = np.asarray(layer.bias[...], np.float32)
    out["lambda_t"] = np.asarray(a.lambda_t[...], np.float32).reshape(1)
    out["lambda_o"] = np.asarray(a.lambda_o[...], np.float32).reshape(1)
    out["z_center"] = np.asarray(a.z_center[...], np.float32)
    out["z_scale"] = np.asarray(a.z_scale[...], np.float32).reshape(1)
  return out


def export(workdir: str, out: str, *, overwrite: bool = False) -> str:
  from safetensors.numpy import save_file
  from tapper_jax.models.lora import save_peft_adapter
  from tapper_jax.serving import trained as trained_lib
  t = trained_lib.load(workdir, progress=False)
  c = t.config
  if c.method != "tapper" or not c.stage2.prefix:
    raise ValueError(f"{workdir}: export covers TAP-PER runs (method 'tapper' with a prefix); "
                     f"this run is method {c.method!r}, prefix={c.stage2.prefix}")
  if os.path.exists(out):
    if not overwrite:
      raise FileExistsError(f"{out}: exists; refusing to overwrite it (pass overwrite=True)")
    aside = f"{out}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(out, aside)  # kept, never deleted
  backbone = c.stage2.backbone or os.path.join(os.path.abspath(workdir), "backbone")
  users = sorted(t.id_map, key=t.id_map.get)
  with atomic_folder(out) as tmp:
    shutil.copytree(backbone, os.path.join(tmp, "backbone"))
    if c.stage2.bridge_lora:
      save_peft_adapter(t.model.llm, os.path.join(tmp, "bridge_lora"), base_model="../backbone")
    os.makedirs(os.path.join(tmp, "tapper"))
    save_file(tapper_tensors(t.model, len(users)),
              os.path.join(tmp, "tapper", "tapper.safetensors"), metadata={"format": "pt"})
    meta = {"task": t.spec.name, "labels": list(t.spec.labels), "users": users,
            "prefix_len": c.stage2.prefix_len, "hidden_size": t.llm.config.hidden_size,
            "user_prefix": c.stage2.user_prefix, "query_prefix": c.stage2.query_prefix,
            "time_decay": c.stage2.time_decay, "order_decay": c.stage2.order_decay,
            "gelu": "exact", "record_tokens": c.stage2.record_tokens,
            "max_prompt_tokens": c.max_prompt_tokens, "max_new_tokens": c.max_new_tokens,
            "chat": t.prompts.chat, "plain_suffix": PLAIN_SUFFIX,
            "record_template": t.spec.record_template,
            "z": "mean of the backbone's input embeddings of the text's first record_tokens "
                 "tokens (no special tokens)",
            "dt": "days from the record to the query, floored at 0",
            "gap": "real records from j to the end of the date-sorted history (newest = 1)"}
    with open(os.path.join(tmp, "tapper", "tapper.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
  return out
