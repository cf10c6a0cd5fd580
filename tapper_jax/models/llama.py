"""Decoder-only Llama-family LLM in Flax NNX (Llama, SmolLM2, Qwen2, Mistral without windows).

Parameter paths mirror Hugging Face (`model.embed_tokens`, `model.layers.self_attn.q_proj`, ...,
`model.norm`, `lm_head`) with two conventions of ours: linear kernels are stored [in, out]
(HF stores `weight` as [out, in]), and the per-layer weights of all layers are stacked on a
leading `layers` axis so that one `jax.lax.scan` runs the stack (compile time flat in depth).
HF's `model.layers.{i}.self_attn.q_proj.weight` is our `model.layers.self_attn.q_proj.kernel[i].T`.

Einsum letters:
  B batch   T query positions   S key positions (T, or the cache length when decoding)
  D hidden  H query heads   K key/value heads   G = H // K (query heads per kv head)
  E head dim   F MLP hidden   V vocab   R LoRA rank   L layers
  U groups of rows and N token slots per group (the unpadded layout, `unpad_index`)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.extend.core.primitives import dot_general_p

from tapper_jax.models.config import LlamaConfig
from tapper_jax.models.partitioning import constrain

KVCache = dict[str, jax.Array]  # {"k": [L,B,S,K,E], "v": [L,B,S,K,E]}

_INIT_STD = 0.02
DROPOUT_MASK = "lora_dropout_mask"  # checkpoint_name of a LoRA dropout mask


def _normal(key, shape, dtype):
  return (_INIT_STD * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def dropout_keep(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
  """(keep mask, keep probability) for dropout at `rate`, from 16-bit uniform draws.

  Partitionable threefry spends one hash per output element whatever its width, so a float32
  `bernoulli` costs a hash per element; splitting each 32-bit draw into two 16-bit ones halves
  the hashing (10% of a SmolLM2 LoRA train step on CPU). The rate is exact to 1/65536.
  """
  cut = round(rate * 65536)
  n = math.prod(shape)
  words = jax.random.bits(key, ((n + 1) // 2,), jnp.uint32)
  u = jnp.concatenate([words & 0xFFFF, words >> 16])[:n].reshape(shape)
  return u >= cut, 1.0 - cut / 65536


class Linear(nnx.Module):
  """y = x W + b + scale * (dropout(x) A) B.  W: [*stack, in, out]; LoRA A: [*stack, in, R].

  The LoRA factors are absent until `tapper_jax.models.lora.attach_lora` adds them; they are
  `nnx.LoRAParam` variables so a filter splits them from the frozen `Param`s.
  """

  def __init__(self, in_features: int, out_features: int, axes: tuple[str, str], *,
               use_bias: bool, stack: int | None, cfg: LlamaConfig, rngs: nnx.Rngs):
    lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
    self.kernel = nnx.Param(_normal(rngs.params(), lead + (in_features, out_features),
                                    cfg.jnp_param_dtype), out_sharding=lead_axes + axes)
    self.bias = nnx.data(nnx.Param(jnp.zeros(lead + (out_features,), cfg.jnp_param_dtype),
                                   out_sharding=lead_axes + axes[1:]) if use_bias else None)
    self.lora_a = nnx.data(None)
    self.lora_b = nnx.data(None)
    self.lora_scale = 0.0
    self.lora_dropout = 0.0
    self.dtype = cfg.jnp_dtype

  def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora_a is not None:
      xl = x
      if dropout_key is not None and self.lora_dropout > 0:
        keep, keep_prob = dropout_keep(dropout_key, self.lora_dropout, x.shape)
        keep = checkpoint_name(keep, DROPOUT_MASK)  # saved by remat "dots": 1 byte an element
        xl = jnp.where(keep, x / keep_prob, 0).astype(x.dtype)
      low = jnp.einsum("...i,ir->...r", xl, self.lora_a[...].astype(self.dtype))
      y = y + self.lora_scale * jnp.einsum("...r,ro->...o", low, self.lora_b[...].astype(self.dtype))
    return y


class RMSNorm(nnx.Module):
  """HF LlamaRMSNorm: normalise in float32, cast back, then scale by the weight."""

  def __init__(self, dim: int, *, stack: int | None, cfg: LlamaConfig):
    lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
    self.weight = nnx.Param(jnp.ones(lead + (dim,), cfg.jnp_param_dtype),
                            out_sharding=lead_axes + ("norm",))
    self.eps = cfg.rms_norm_eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """[E/2] inverse frequencies, float32 as HF computes them, with Llama-3 scaling if configured."""
  dim = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  inv = inv.astype(np.float32)
  s = cfg.rope_scaling_dict
  if s:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    lo_wavelen, hi_wavelen = old_len / lo, old_len / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
    inv = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
  """positions [B,T] -> cos, sin [B,T,E] (HF layout: the two halves repeat)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _apply_rope(x, cos, sin):
  """x [B,T,N,E]; rotate-half convention of HF Llama."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def unpad_index(mask: jax.Array, groups: int, n: int) -> tuple[jax.Array, jax.Array]:
  """mask [B,S] -> (index [U,N], inverse [U,(B/U)*S]) int32, over each group of B/U rows
  flattened to (B/U)*S slots: index[u, j] is the slot of the group's j-th real token (past the
  last one: (B/U)*S, out of range), inverse[u, s] the j of slot s (a padding slot: N, out of
  range). N must be >= the most real slots of any group (a group with more loses its last)."""
  flat = mask.reshape(groups, -1) > 0
  index = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=m.shape[0])[0])(flat)
  rank = jnp.cumsum(flat, axis=1) - 1
  inverse = jnp.where(flat & (rank < n), rank, n)
  return index.astype(jnp.int32), inverse.astype(jnp.int32)


@jax.custom_vjp
def _take(a: jax.Array, take: jax.Array, back: jax.Array) -> jax.Array:
  """a [U,M,...] -> [U,len(take),...]: a[u, take[u, j]], zero where take is out of range.
  `back` is the inverse map (a's slot -> its j, or out of range), so that the gradient is a
  gather too: autodiff would transpose the gather into a scatter-add, much slower on a CPU."""
  del back
  return jax.vmap(lambda x, i: x.at[i].get(mode="fill", fill_value=0))(a, take)


def _take_fwd(a, take, back):
  return _take(a, take, back), (take, back)


def _take_bwd(res, g):
  take, back = res
  return _take(g, back, take), None, None


_take.defvjp(_take_fwd, _take_bwd)


def to_flat(x: jax.Array, index) -> jax.Array:
  """x [B,S,...] -> [U,N,...]: the real slots of each group (`unpad_index`), zeros after."""
  take, back = index
  return _take(x.reshape(take.shape[0], -1, *x.shape[2:]), take, back)


def to_padded(x: jax.Array, index, b: int, s: int) -> jax.Array:
  """[U,N,...] -> [B,S,...]: each token back in its slot, zeros in the padding."""
  take, back = index
  return _take(x, back, take).reshape(b, s, *x.shape[2:])


class Attention(nnx.Module):
  """Grouped-query attention over stacked layers (one layer at a time inside the scan)."""

  def __init__(self, cfg: LlamaConfig, *, stack: int | None, rngs: nnx.Rngs):
    d, h, k, e = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kw = dict(stack=stack, cfg=cfg, rngs=rngs)
    self.q_proj = Linear(d, h * e, ("embed", "q_heads"), use_bias=cfg.qkv_bias, **kw)
    self.k_proj = Linear(d, k * e, ("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
    self.v_proj = Linear(d, k * e, ("embed", "kv_heads"), use_bias=cfg.qkv_bias, **kw)
    self.o_proj = Linear(h * e, d, ("q_heads", "embed"), use_bias=cfg.o_bias, **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = h, k, e
    if cfg.attention not in ("einsum", "xla", "cudnn"):
      raise ValueError(f"attention must be einsum, xla or cudnn; got {cfg.attention!r}")
    self.attention = cfg.attention

  def __call__(self, x, cos, sin, kv_mask, cache, cache_index, dropout_keys, layer=0,
               index=None):
    """x [B,T,D]; kv_mask [B,S] (1 = a real key), or with a cache [B,T,S] (per query);
    cache {"k","v"}: [L,B,S,K,E] or None. With `index` (`unpad_index`; no cache), x and
    cos/sin are [U,N,...]: the projections run on the real tokens alone, attention on their
    padded [B,S] layout (kv_mask [B,S]).

    The whole stacked cache is updated in place at (`layer`, `cache_index`): carrying it through
    the layer scan, rather than scanning over per-layer slices, saves a copy of the full cache
    at every decode step.
    """
    b, t, _ = x.shape
    h, k, e = self.num_heads, self.num_kv_heads, self.head_dim
    dk = dropout_keys if dropout_keys is not None else (None,) * 4
    q = self.q_proj(x, dk[0]).reshape(b, t, h, e)
    key = self.k_proj(x, dk[1]).reshape(b, t, k, e)
    val = self.v_proj(x, dk[2]).reshape(b, t, k, e)
    q, key = _apply_rope(q, cos, sin), _apply_rope(key, cos, sin)
    if index is not None:  # one gather for the three: [U,N,(H+2K)E] -> [B,S,(H+2K)E]
      flat = jnp.concatenate([a.reshape(*a.shape[:2], -1) for a in (q, key, val)], axis=-1)
      b, t = kv_mask.shape
      q, key, val = jnp.split(to_padded(flat, index, b, t), [h * e, (h + k) * e], axis=-1)
      q, key, val = q.reshape(b, t, h, e), key.reshape(b, t, k, e), val.reshape(b, t, k, e)
    if cache is not None:
      at = (layer, 0, cache_index, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], key[None].astype(cache["k"].dtype), at),
               "v": jax.lax.dynamic_update_slice(cache["v"], val[None].astype(cache["v"].dtype), at)}
      key = jax.lax.dynamic_index_in_dim(cache["k"], layer, 0, keepdims=False).astype(q.dtype)
      val = jax.lax.dynamic_index_in_dim(cache["v"], layer, 0, keepdims=False).astype(q.dtype)
    s = key.shape[1]
    if cache is None and self.attention != "einsum":
      # Fused attention: no [B,K,G,T,S] logits in memory. Same causal + key-padding mask, and
      # each slot may see itself, so a padding slot's row is never fully masked (a fused kernel
      # may return NaN there, which would reach real rows through 0 * NaN in the next layer).
      eye = jnp.eye(t, s, dtype=bool)
      allowed = (jnp.tril(jnp.ones((t, s), bool))[None] & (kv_mask[:, None, :] > 0)) | eye[None]
      out = jax.nn.dot_product_attention(q, key, val, mask=allowed[:, None],
                                         implementation=self.attention).reshape(b, t, h * e)
      return self._out(out, index, dk[3]), cache
    q = q.reshape(b, t, k, h // k, e)
    logits = jnp.einsum("btkge,bske->bkgts", q, key).astype(jnp.float32) / math.sqrt(e)
    # Causal over absolute slots (query slot = cache_index + t) and the key padding mask.
    q_slot = cache_index + jnp.arange(t)
    # kv_mask [B,T,S] gives each query its own keys (candidate tokens that share a prefix and
    # must not see each other: tpop/features.py); [B,S] the same keys to every query.
    keys = kv_mask if kv_mask.ndim == 3 else kv_mask[:, None, :]
    allowed = (jnp.arange(s)[None, :] <= q_slot[:, None])[None] & (keys > 0)
    logits = jnp.where(allowed[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, val).reshape(b, t, h * e)
    return self._out(out, index, dk[3]), cache

  def _out(self, out, index, dropout_key):
    """[B,T,H*E] attention output -> o_proj, on the real tokens alone where `index` is given."""
    if index is not None:
      out = to_flat(out, index)
    return self.o_proj(constrain(out, ("batch", "length", "q_heads")), dropout_key)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: LlamaConfig, *, stack: int | None, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(use_bias=False, stack=stack, cfg=cfg, rngs=rngs)
    self.gate_proj = Linear(d, f, ("embed", "mlp"), **kw)
    self.up_proj = Linear(d, f, ("embed", "mlp"), **kw)
    self.down_proj = Linear(f, d, ("mlp", "embed"), **kw)

  def __call__(self, x):
    hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    return self.down_proj(constrain(hidden, ("batch", "length", "mlp")))


REMAT = ("none", "full", "dots")


def remat_policy(remat: str | bool):
  """The layer scan's `jax.checkpoint` policy for `config.model.remat`, or None (no checkpoint).

  "none" (False): autodiff keeps every residual it wants. Through a scan that is several copies
    of the same [B,T,F] MLP activation (one per elementwise op that reads it) and the float32
    norm inputs, written per layer in the forward and read back in the backward.
  "full" (True): keep only each layer's input; recompute the whole layer (memory for time).
  "dots": keep the matmul outputs, the fused attention's forward outputs and the LoRA dropout
    masks (cheaper to store than to redraw); recompute the elementwise work (norms, RoPE,
    SiLU) inside the backward's fusions.
  """
  remat = {False: "none", True: "full"}.get(remat, remat)
  if remat not in REMAT:
    raise ValueError(f"model.remat must be one of {REMAT} (or a bool); got {remat!r}")
  if remat == "none":
    return None
  if remat == "full":
    return jax.checkpoint_policies.nothing_saveable

  def dots(prim, *_, **params):
    # cuDNN's attention is a custom_vjp whose forward binds "dot_product_attention_fwd*".
    return (prim is dot_general_p or prim.name.startswith("dot_product_attention_fwd")
            or (prim.name == "name" and params.get("name") == DROPOUT_MASK))
  return dots


class DecoderLayers(nnx.Module):
  """All decoder layers, weights stacked on axis 0; `__call__` scans them."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    n = cfg.num_hidden_layers
    self.self_attn = Attention(cfg, stack=n, rngs=rngs)
    self.mlp = MLP(cfg, stack=n, rngs=rngs)
    self.input_layernorm = RMSNorm(cfg.hidden_size, stack=n, cfg=cfg)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, stack=n, cfg=cfg)
    self.num_layers = n
    self.unroll = cfg.scan_unroll if cfg.scan_unroll > 0 else n

  def _one_layer(self, x, cos, sin, kv_mask, cache, cache_index, key, layer, index):
    """Runs on a merged view whose variables hold one layer's slice."""
    dropout_keys = None if key is None else tuple(jax.random.split(key, 4))
    attn, cache = self.self_attn(self.input_layernorm(x), cos, sin, kv_mask, cache, cache_index,
                                 dropout_keys, layer, index)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed")), cache

  def __call__(self, x, cos, sin, kv_mask, cache: KVCache | None, cache_index, dropout_key,
               remat: str | bool = False, index=None):
    graphdef, state = nnx.split(self)
    policy = remat_policy(remat)
    keys = None if dropout_key is None else jax.random.split(dropout_key, self.num_layers)

    def body(carry, xs):
      h, cache = carry
      layer_state, i, key = xs
      layer = nnx.merge(graphdef, layer_state)
      return layer._one_layer(h, cos, sin, kv_mask, cache, cache_index, key, i, index), None

    if policy is not None:
      body = jax.checkpoint(body, policy=policy)
    (x, cache), _ = jax.lax.scan(body, (x, cache), (state, jnp.arange(self.num_layers), keys),
                                 unroll=self.unroll)
    return x, cache


class Embedding(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.embedding = nnx.Param(_normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size),
                                       cfg.jnp_param_dtype), out_sharding=("vocab", "embed"))
    self.dtype = cfg.jnp_dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class LlamaModel(nnx.Module):
  """HF `model.`: embeddings, decoder stack, final norm."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.embed_tokens = Embedding(cfg, rngs=rngs)
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.norm = RMSNorm(cfg.hidden_size, stack=None, cfg=cfg)


class LlamaForCausalLM(nnx.Module):
  """The causal LM. Call it with token ids or input embeddings; it returns (logits, cache).

  `hidden_states` + `logits` split the call so that callers compute logits only where they
  need them (the loss positions in training, the last position in generation).
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.model = LlamaModel(cfg, rngs=rngs)
    self.lm_head = nnx.data(None if cfg.tie_word_embeddings else Linear(
        cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=False, stack=None, cfg=cfg,
        rngs=rngs))
    self._inv_freq = tuple(float(f) for f in rope_inv_freq(cfg))  # static, hashable

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """[B,T] ids -> [B,T,D] input embeddings (what a soft prefix is concatenated with)."""
    return self.model.embed_tokens(input_ids)

  def hidden_states(self, input_ids=None, *, inputs_embeds=None, attention_mask=None,
                    positions=None, cache: KVCache | None = None, cache_index: Any = 0,
                    dropout_key=None, remat: str | bool = False,
                    unpad: tuple[int, int] | None = None):
    """Final-norm hidden states [B,T,D] and the updated cache.

    attention_mask: [B,S] with 1 for real tokens; S = T without a cache, the cache length with
      one (the caller marks which cache slots hold real tokens). Left or right padding both work.
      With a cache it may be [B,T,S]: the slots each query token may see (still causal).
    positions: [B,T] rotary positions; by default the count of real tokens before each one.
    cache_index: the cache slot where this call's first token is written.
    unpad: (U, N) static (training, no cache): the norms, projections and MLP run on the real
      tokens alone, the B rows cut into U groups of N slots each (`unpad_index`; U divides B and
      is a multiple of the batch shards, so that no group spans two); attention runs on the
      padded layout. Padding slots come back as zeros (the padded layout gives them values).
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.config.jnp_dtype)
    b, t, _ = x.shape
    if attention_mask is None:
      if cache is not None:
        raise ValueError("decoding with a cache needs an attention_mask over the cache slots")
      attention_mask = jnp.ones((b, t), jnp.int32)
    if positions is None:
      if cache is not None:
        raise ValueError("decoding with a cache needs explicit positions")
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    cos, sin = rope_cos_sin(positions, np.asarray(self._inv_freq, np.float32), x.dtype)
    index = None
    if unpad is not None:
      if cache is not None or attention_mask.ndim != 2:
        raise ValueError("unpad is for training: no cache, a [B,S] attention_mask")
      index = unpad_index(attention_mask, *unpad)
      x, cos, sin = (to_flat(a, index) for a in (x, cos, sin))
    x = constrain(x, ("batch", "length", "embed"))
    x, cache = self.model.layers(x, cos, sin, attention_mask, cache, cache_index, dropout_key,
                                 remat=remat, index=index)
    x = self.model.norm(x)
    return (x if index is None else to_padded(x, index, b, t)), cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] in the compute dtype."""
    if self.lm_head is None:
      emb = self.model.embed_tokens.embedding[...].astype(hidden.dtype)
      return jnp.einsum("...d,vd->...v", hidden, emb)
    return self.lm_head(hidden)

  def __call__(self, input_ids=None, **kw):
    hidden, cache = self.hidden_states(input_ids, **kw)
    return self.logits(hidden), cache


def init_cache(cfg: LlamaConfig, batch: int, length: int, dtype=None) -> KVCache:
  shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
  dtype = dtype or cfg.jnp_dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
