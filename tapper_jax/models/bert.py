"""BERT encoder in Flax NNX, and the sentence encoder built on it (all-MiniLM-L6-v2).

Parameter paths mirror Hugging Face's `BertModel` (`embeddings.word_embeddings`,
`encoder.layer.attention.self.query`, ..., `encoder.layer.output.LayerNorm`) with the house
conventions of `llama.py`: kernels [in, out], and the layers stacked on a leading axis that one
`jax.lax.scan` runs. HF's `encoder.layer.{i}.attention.self.query.weight` is our
`encoder.layer.attention.self.query.kernel[i].T`. The pooler is not built (sentence embeddings
mean-pool the last hidden states; the checkpoint's `pooler.*` tensors are not read).

Einsum letters:
  B batch   T query positions   S key positions   D hidden   N heads   E head dim   F MLP hidden
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax.errors import ConfigError
from tapper_jax.models.tokenizer import bucket_length

_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture of a BERT encoder (HF `config.json` field names)."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"  # HF "gelu" is the exact (erf) GELU
  pad_token_id: int = 0
  dtype: str = "float32"  # compute and storage dtype (not architecture)

  @classmethod
  def from_pretrained(cls, folder: str) -> "BertConfig":
    path = os.path.join(folder, "config.json")
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except FileNotFoundError as e:
      raise ConfigError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if raw.get("model_type") != "bert":
      raise ConfigError(f"{path}: field 'model_type' is {raw.get('model_type')!r}, expected 'bert'")
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise ConfigError(f"{path}: field 'position_embedding_type' must be 'absolute'")
    if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
      raise ConfigError(f"{path}: field 'hidden_act' = {raw.get('hidden_act')!r} is not one of "
                        f"{sorted(_ACTIVATIONS)}")
    names = {f.name for f in dataclasses.fields(cls)} - {"dtype"}
    try:
      return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as e:
      raise ConfigError(f"{path}: {e}") from e

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
                "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
                "relu": jax.nn.relu}


def _normal(rngs, shape):
  return _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)


class Dense(nnx.Module):
  """y = x W + b; W [*stack, in, out]."""

  def __init__(self, n_in: int, n_out: int, *, stack: int, dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_normal(rngs, (stack, n_in, n_out)).astype(dtype))
    self.bias = nnx.Param(jnp.zeros((stack, n_out), dtype))

  def __call__(self, x):
    return jnp.einsum("...i,io->...o", x, self.kernel[...]) + self.bias[...]


class LayerNorm(nnx.Module):
  """HF LayerNorm (`weight`, `bias`), normalised in float32."""

  def __init__(self, dim: int, eps: float, *, stack: int | None, dtype):
    lead = (stack,) if stack else ()
    self.weight = nnx.Param(jnp.ones(lead + (dim,), dtype))
    self.bias = nnx.Param(jnp.zeros(lead + (dim,), dtype))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.weight[...] + self.bias[...]).astype(x.dtype)


class Embeddings(nnx.Module):
  def __init__(self, cfg: BertConfig, dtype, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.word_embeddings = nnx.Embed(cfg.vocab_size, d, dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, d, dtype=dtype,
                                         param_dtype=dtype, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, dtype=dtype,
                                           param_dtype=dtype, rngs=rngs)
    self.LayerNorm = LayerNorm(d, cfg.layer_norm_eps, stack=None, dtype=dtype)

  def __call__(self, input_ids, token_type_ids):
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(token_type_ids))
    return self.LayerNorm(x)


class _SelfAttention(nnx.Module):  # HF: attention.self
  def __init__(self, cfg, n, dtype, rngs):
    d = cfg.hidden_size
    self.query = Dense(d, d, stack=n, dtype=dtype, rngs=rngs)
    self.key = Dense(d, d, stack=n, dtype=dtype, rngs=rngs)
    self.value = Dense(d, d, stack=n, dtype=dtype, rngs=rngs)


class _Output(nnx.Module):  # HF: attention.output and output (dense + residual LayerNorm)
  def __init__(self, cfg, n_in, n, dtype, rngs):
    self.dense = Dense(n_in, cfg.hidden_size, stack=n, dtype=dtype, rngs=rngs)
    self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, stack=n, dtype=dtype)


class _Attention(nnx.Module):
  def __init__(self, cfg, n, dtype, rngs):
    self.self = _SelfAttention(cfg, n, dtype, rngs)
    self.output = _Output(cfg, cfg.hidden_size, n, dtype, rngs)


class _Intermediate(nnx.Module):
  def __init__(self, cfg, n, dtype, rngs):
    self.dense = Dense(cfg.hidden_size, cfg.intermediate_size, stack=n, dtype=dtype, rngs=rngs)


class Layers(nnx.Module):
  """All encoder layers (HF `encoder.layer`), weights stacked on axis 0; `__call__` scans them."""

  def __init__(self, cfg: BertConfig, dtype, rngs: nnx.Rngs):
    n = cfg.num_hidden_layers
    self.attention = _Attention(cfg, n, dtype, rngs)
    self.intermediate = _Intermediate(cfg, n, dtype, rngs)
    self.output = _Output(cfg, cfg.intermediate_size, n, dtype, rngs)
    self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
    self.act = cfg.hidden_act

  def __call__(self, x, mask):
    """x [B,T,D]; mask [B,S=T] (1 = a real token)."""
    graphdef, state = nnx.split(self)
    b, t, d = x.shape
    n, e = self.num_heads, self.head_dim
    act = _ACTIVATIONS[self.act]

    def layer(h, layer_state):
      m = nnx.merge(graphdef, layer_state)
      att = m.attention
      q = att.self.query(h).reshape(b, t, n, e)
      k = att.self.key(h).reshape(b, t, n, e)
      v = att.self.value(h).reshape(b, t, n, e)
      logits = jnp.einsum("btne,bsne->bnts", q, k).astype(jnp.float32) / math.sqrt(e)
      logits = jnp.where(mask[:, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1).astype(h.dtype)
      ctx = jnp.einsum("bnts,bsne->btne", probs, v).reshape(b, t, d)
      h = att.output.LayerNorm(att.output.dense(ctx) + h)
      return m.output.LayerNorm(m.output.dense(act(m.intermediate.dense(h))) + h), None

    # Scan over the stacked leading axis of every weight (one layer's slice per step).
    return jax.lax.scan(layer, x, state)[0]


class Encoder(nnx.Module):  # HF: encoder
  def __init__(self, cfg, dtype, rngs):
    self.layer = Layers(cfg, dtype, rngs)


class BertModel(nnx.Module):
  """HF `BertModel` without the pooler: ids [B,T] -> last hidden states [B,T,D]."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.config = cfg
    self.embeddings = Embeddings(cfg, dtype, rngs)
    self.encoder = Encoder(cfg, dtype, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids)
    return self.encoder.layer(x, attention_mask)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B,T,D], [B,T] -> [B,D]: sentence-transformers' mean over real tokens."""
  m = mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def l2_normalize(x: jax.Array) -> jax.Array:
  """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_bert(folder: str, *, dtype: str = "float32") -> BertModel:
  """Our BertModel from an HF folder (config.json + safetensors), torch-free."""
  import functools
  from tapper_jax.models.weights import fill_from_hf, hf_name
  cfg = dataclasses.replace(BertConfig.from_pretrained(folder), dtype=dtype)
  abstract = nnx.eval_shape(lambda: BertModel(cfg, rngs=nnx.Rngs(0)))
  # HF's encoder.layer.{i} is our stacked encoder.layer
  return fill_from_hf(abstract, folder, functools.partial(hf_name, stack=("encoder", "layer")),
                      jnp.dtype(dtype))


class SentenceEncoder:
  """Texts -> L2-normalised mean-pooled embeddings [N, D] (float32 numpy), as sentence-transformers.

  Frozen: the model runs under one jitted function; batches are padded to a multiple of 8 rows
  and lengths to powers of two, so a corpus compiles a handful of shapes.
  """

  def __init__(self, model: BertModel, tokenizer, *, max_seq_length: int = 256,
               batch_size: int = 64, source: str = "<memory>"):
    self.model, self.tokenizer, self.source = model, tokenizer, source
    self.max_seq_length, self.batch_size = max_seq_length, batch_size
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_seq_length)
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, ids, mask):
      hidden = nnx.merge(graphdef, state)(ids, mask)
      return l2_normalize(mean_pool(hidden.astype(jnp.float32), mask))

    self._embed = lambda ids, mask: embed(state, ids, mask)

  @property
  def dim(self) -> int:
    return self.model.config.hidden_size

  @classmethod
  def from_pretrained(cls, folder: str, **kw) -> "SentenceEncoder":
    """A sentence-transformers folder: config.json, model.safetensors, tokenizer.json and (if
    present) sentence_bert_config.json's max_seq_length. Mean pooling + normalisation only."""
    from tokenizers import Tokenizer as HFTokenizer
    pooling = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pooling):
      with open(pooling, encoding="utf-8") as f:
        mode = json.load(f)
      if not mode.get("pooling_mode_mean_tokens") or any(
          v for k, v in mode.items() if k.startswith("pooling_mode") and k != "pooling_mode_mean_tokens"):
        raise ConfigError(f"{pooling}: only mean pooling is supported, got {mode}")
    st = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(st) and "max_seq_length" not in kw:
      with open(st, encoding="utf-8") as f:
        kw["max_seq_length"] = int(json.load(f).get("max_seq_length", 256))
    tok_path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tok_path):
      raise ConfigError(f"{tok_path}: missing")
    return cls(load_bert(folder), HFTokenizer.from_file(tok_path), source=folder, **kw)

  def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Padded ids and mask [N, bucket] (truncated to max_seq_length, [CLS] ... [SEP])."""
    return self._pad([e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])])

  def _pad(self, seqs) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask [N, T] for token sequences. T: a multiple of 8 up to 64, then a power of two
    (T-POP embeds ~40 texts of 9-30 tokens every step: 17 pad to 24, not 32), at most
    max_seq_length."""
    n = max((len(s) for s in seqs), default=1)
    t = min(-(-n // 8) * 8 if n <= 64 else bucket_length(n), self.max_seq_length)
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t), np.int32)
    for i, s in enumerate(seqs):
      ids[i, :len(s)] = s
      mask[i, :len(s)] = 1
    return ids, mask

  def encode(self, texts, *, progress=None) -> np.ndarray:
    """[N, D] float32 embeddings. Texts that tokenize alike (the model is uncased: "The" and
    "the" are one text to it; T-POP's candidates often are) are embedded once. Sequences are
    sorted by length so each batch pads little."""
    enc = self.tokenizer.encode_batch([str(t) for t in texts])
    unique: dict[tuple, int] = {}  # token ids -> row of `embedded`
    rows = np.asarray([unique.setdefault(tuple(e.ids), len(unique)) for e in enc], np.int64)
    seqs = list(unique)
    per_row = np.bincount(rows, minlength=len(seqs))  # texts each row stands for
    embedded = np.zeros((len(seqs), self.dim), np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), self.batch_size):
      idx = order[s:s + self.batch_size]
      ids, mask = self._pad([seqs[i] for i in idx])
      # Rows padded to a multiple of 8: few compiled shapes for varying N, and at most 7 wasted
      # rows (a power of two wastes up to half: T-POP embeds ~40-80 candidates every step).
      pad = -len(idx) % 8
      if pad:
        ids, mask = np.pad(ids, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
      embedded[idx] = np.asarray(self._embed(ids, mask))[:len(idx)]
      if progress is not None:
        progress(int(per_row[idx].sum()))
    return embedded[rows]
