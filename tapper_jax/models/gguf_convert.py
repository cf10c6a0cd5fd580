"""GGUF (llama.cpp) -> Hugging Face folder, torch-free, via the `gguf` package.

What it undoes: llama.cpp stores q_proj/k_proj rows permuted for its interleaved rotary layout
(convert_hf_to_gguf.py's `permute`); we apply the inverse per head. Quantized tensors (Q8_0,
Q4_1, ...) are dequantized to float32: the result is exactly the model the GGUF file carries.
The tokenizer is rebuilt as a byte-level BPE from `tokenizer.ggml.{tokens,merges,token_type}`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tapper_jax.fileio import atomic_folder
from tapper_jax.models.weights import SINGLE_FILE

_LAYER_MAP = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_MAP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_CONTROL = 3  # gguf TokenType.CONTROL


class GGUFError(ValueError):
  """A GGUF file we cannot convert; the message names the file and field or tensor."""


def _field(reader, key, path, default=None, required=True):
  import gguf
  f = reader.fields.get(key)
  if f is None:
    if required and default is None:
      raise GGUFError(f"{path}: metadata field {key!r} missing")
    return default
  if f.types and f.types[0] == gguf.GGUFValueType.STRING:
    return bytes(f.parts[f.data[0]]).decode("utf-8")
  if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
    if len(f.types) > 1 and f.types[1] == gguf.GGUFValueType.STRING:
      return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    return [f.parts[i].tolist()[0] for i in f.data]
  return f.parts[f.data[0]].tolist()[0]


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute`: rows [n_heads, hd/2, 2] -> [n_heads, 2, hd/2]."""
  out_dim = w.shape[0]
  return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str) -> tuple[dict, dict[str, np.ndarray], dict]:
  """-> (HF config dict, HF tensors float32, tokenizer pieces)."""
  import gguf
  from gguf.quants import dequantize
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:
    raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
  arch = _field(reader, "general.architecture", path)
  if arch not in ("llama", "qwen2"):
    raise GGUFError(f"{path}: field 'general.architecture' = {arch!r} is not supported (llama, qwen2)")
  g = lambda k, **kw: _field(reader, f"{arch}.{k}", path, **kw)
  n_heads, n_kv = g("attention.head_count"), g("attention.head_count_kv", default=None, required=False)
  n_kv = n_kv or n_heads
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  names = {t.name for t in reader.tensors}
  cfg = {
      "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
      "model_type": arch, "vocab_size": len(tokens), "hidden_size": g("embedding_length"),
      "intermediate_size": g("feed_forward_length"), "num_hidden_layers": g("block_count"),
      "num_attention_heads": n_heads, "num_key_value_heads": n_kv,
      "head_dim": g("embedding_length") // n_heads,
      "rms_norm_eps": g("attention.layer_norm_rms_epsilon"),
      "rope_theta": g("rope.freq_base", default=10000.0, required=False),
      "max_position_embeddings": g("context_length"),
      "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu",
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id", path, required=False),
      "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id", path, required=False),
      "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id", path, required=False),
      "torch_dtype": "float32",
  }
  if arch == "llama":
    cfg["attention_bias"] = "blk.0.attn_q.bias" in names
  tensors = {}
  for t in reader.tensors:
    stem, kind = t.name.rsplit(".", 1)
    parts = stem.split(".")
    if parts[0] == "blk":
      hf = f"model.layers.{parts[1]}.{_LAYER_MAP.get(parts[2], '?')}.{kind}"
      if "?" in hf:
        raise GGUFError(f"{path}: tensor {t.name!r} has no Hugging Face counterpart")
    elif stem in _TOP_MAP:
      hf = f"{_TOP_MAP[stem]}.{kind}"
    else:
      raise GGUFError(f"{path}: tensor {t.name!r} has no Hugging Face counterpart")
    try:
      arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    except Exception as e:
      raise GGUFError(f"{path}: tensor {t.name!r} cannot be dequantized ({e})") from e
    arr = arr.reshape([int(x) for x in reversed(t.shape)])  # GGUF lists dims innermost first
    if arch == "llama" and parts[0] == "blk" and parts[2] in ("attn_q", "attn_k"):
      arr = unpermute_rows(arr, n_heads if parts[2] == "attn_q" else n_kv)
    tensors[hf] = np.ascontiguousarray(arr)
  tok = {
      "tokens": tokens,
      "merges": _field(reader, "tokenizer.ggml.merges", path),
      "types": _field(reader, "tokenizer.ggml.token_type", path),
      "model": _field(reader, "tokenizer.ggml.model", path),
      "pre": _field(reader, "tokenizer.ggml.pre", path, default="default", required=False),
      "chat_template": _field(reader, "tokenizer.chat_template", path, default="", required=False),
      "bos": cfg["bos_token_id"], "eos": cfg["eos_token_id"], "pad": cfg["pad_token_id"],
  }
  return cfg, tensors, tok


def build_tokenizer(tok: dict, path: str):
  """A `tokenizers.Tokenizer` (byte-level BPE) from GGUF vocabulary, merges and token types."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
  if tok["model"] != "gpt2":
    raise GGUFError(f"{path}: field 'tokenizer.ggml.model' = {tok['model']!r}: only byte-level "
                    "BPE ('gpt2') tokenizers can be rebuilt")
  try:
    vocab = {t: i for i, t in enumerate(tok["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in tok["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  except Exception as e:
    raise GGUFError(f"{path}: fields 'tokenizer.ggml.tokens/merges' do not form a BPE ({e})") from e
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  # llama.cpp's "smollm" pre-tokenizer splits digits one by one before the GPT-2 regex.
  tk.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               byte_level])
                      if tok["pre"] == "smollm" else byte_level)
  tk.decoder = decoders.ByteLevel()
  tk.post_processor = processors.ByteLevel(trim_offsets=False)
  tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                         for t, ty in zip(tok["tokens"], tok["types"]) if ty == _CONTROL])
  return tk


def convert_gguf(path: str, out_dir: str) -> str:
  """Writes an HF folder (config, fp32 safetensors, tokenizer) at `out_dir`, atomically."""
  from safetensors.numpy import save_file
  if not os.path.isfile(path):
    raise GGUFError(f"{path}: missing")
  cfg, tensors, tok = read_gguf(path)
  tk = build_tokenizer(tok, path)
  name = lambda i: tok["tokens"][i] if i is not None else None
  tok_conf = {"bos_token": name(tok["bos"]), "eos_token": name(tok["eos"]),
              "pad_token": name(tok["pad"]), "chat_template": tok["chat_template"] or None,
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg["max_position_embeddings"]}
  gen_conf = {"bos_token_id": tok["bos"], "eos_token_id": tok["eos"], "pad_token_id": tok["pad"]}
  with atomic_folder(out_dir) as tmp:
    save_file(tensors, os.path.join(tmp, SINGLE_FILE), metadata={"format": "pt"})
    tk.save(os.path.join(tmp, "tokenizer.json"))
    for fname, obj in (("config.json", cfg), ("tokenizer_config.json", tok_conf),
                       ("generation_config.json", gen_conf),
                       ("source.json", {"converted_from": os.path.abspath(path)})):
      with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
  return out_dir
