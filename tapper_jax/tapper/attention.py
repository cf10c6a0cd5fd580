"""Temporal attention over a user's whole visible history -> the query-conditioned prefix P_q.

  s_j = MLP([z_q; z_j; z_q - z_j; z_q * z_j]) - lambda_t log(1 + dt_j) - lambda_o log(1 + gap_j)
  a   = softmax_j(s) over the user's whole visible history (padding masked)
  P_q = Linear(D -> L*D)(sum_j a_j z_j)

dt_j: days from record j to the query, floored at 0 (a same-day record has dt = 0). gap_j: the
query's index minus the record's index in the date-sorted history, so the newest record has
gap 1; histories arrive left-aligned, oldest first, so gap_j counts the real records from j to
the end. lambda_t, lambda_o start at N(0, 0.02) and are learned; either decay can be switched
off (an ablation). A user with no history gets a = 0, so P_q is the projection's bias alone.

Every z (query and records) first becomes (z - z_center) * z_scale. Both are fixed statistics,
held with the parameters so that checkpoints and exports carry them, never trained (a stop
gradient here, a zero update in the optimizer). At (0, 1) this is the paper's module. Set from
the record bank (`stage2.standardize_z`) they remove the direction every mean token embedding
shares. Uncentred (SmolLM2, huffpost_2N), the bank's mean has 2x the norm of a record's distance
from it, and a history's average 6x its spread across users, so the projection's gradient is
dominated by that shared direction and Adam learns a near-constant P_q (trained: across users
P_q varied by 4% of its norm; standardized: 47%). See training/defaults.py for what it gave.

The context sum_j a_j z_j runs as a streaming softmax over fixed-size chunks of the history
(`lax.scan`, running max and sum): the [B, C, 4D] score features of one chunk are alive at a
time, so thousands of records fit in memory and one compiled shape serves every history length
up to H. `weights` is the plain, unchunked softmax, for inspection and as the reference.

Einsum letters: B batch, H history slots, C chunk slots, D hidden (model width), L prefix length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_NEG = -1e30  # a finite "minus infinity": masked slots stay NaN-free in the backward pass


def _init(key, shape, std=0.02):
  return std * jax.random.normal(key, shape, jnp.float32)


class Dense(nnx.Module):
  """y = x W + b with logical axis names on W (float32: these weights are small), initialised as
  PyTorch's nn.Linear (the official code's modules): W and b uniform in +-1/sqrt(d_in)."""

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, rngs: nnx.Rngs):
    key = rngs.params()
    bound = 1.0 / d_in ** 0.5  # kaiming_uniform(a=sqrt(5)) of the kernel; the bias's own rule
    self.kernel = nnx.Param(jax.random.uniform(key, (d_in, d_out), jnp.float32, -bound, bound),
                            out_sharding=axes)
    # The bias key derives from the kernel's: one draw from the stream, so every later
    # parameter (the prefix table) keeps its place in it.
    self.bias = nnx.Param(jax.random.uniform(jax.random.fold_in(key, 1), (d_out,), jnp.float32,
                                             -bound, bound), out_sharding=axes[1:])

  def __call__(self, x):
    return jnp.einsum("...i,io->...o", x, self.kernel[...]) + self.bias[...]


def decay_inputs(hist_age, hist_valid):
  """(dt [B,H], gap [B,H]) of a left-aligned, oldest-first history; 0 on padding."""
  dt = jnp.where(hist_valid, jnp.maximum(hist_age, 0.0), 0.0)
  valid = hist_valid.astype(jnp.float32)
  gap = jnp.cumsum(valid[:, ::-1], axis=1)[:, ::-1] * valid  # real records from j to the end
  return dt, gap


class ZStats(nnx.Param):
  """A fixed statistic kept among the parameters (so it is checkpointed and exported) that
  training never changes: read through a stop gradient, updated by zero (training/steps.py)."""


# The fixed statistics by name, each with its identity value (raw z, the paper's module): their
# init here, the names the optimizer never updates, and what a checkpoint written before they
# existed restores them as (training/steps.py, training/checkpoint.py).
ZSTATS = {"z_center": 0.0, "z_scale": 1.0}


def standardize_stats(z: "np.ndarray") -> tuple["np.ndarray", float]:
  """(center [D], scale) of a record bank z [N, D]: its mean, and the inverse of the records'
  mean distance from it, so standardized records have norm ~1."""
  import numpy as np
  z = np.asarray(z, np.float64)
  center = z.mean(axis=0)
  spread = float(np.linalg.norm(z - center, axis=1).mean())
  if not np.isfinite(spread) or spread <= 0:
    raise ValueError(f"cannot standardize a record bank of {len(z)} records with spread {spread}")
  return center.astype(np.float32), 1.0 / spread


class TemporalAttention(nnx.Module):
  def __init__(self, d: int, prefix_len: int, *, time_decay: bool = True,
               order_decay: bool = True, chunk: int = 64, rngs: nnx.Rngs):
    if prefix_len <= 0:
      raise ValueError(f"prefix length L must be positive, got {prefix_len}")
    if chunk <= 0:
      raise ValueError(f"attention chunk must be positive, got {chunk}")
    self.score_in = Dense(4 * d, d, ("tapper_in", "tapper_hidden"), rngs=rngs)
    self.score_out = Dense(d, 1, ("tapper_hidden", None), rngs=rngs)
    self.lambda_t = nnx.Param(_init(rngs.params(), ()))
    self.lambda_o = nnx.Param(_init(rngs.params(), ()))
    # Its bias is drawn, not 0: with a zero bias a user with no row and no history gets an
    # exactly zero prefix, and an all-zero first token overflows the backward (its RMSNorm
    # scales the gradient by 1/sqrt(eps) ~ 316 in every layer through the attention sink): NaN
    # LoRA gradients on SmolLM2 (tests/test_tapper.py).
    self.proj = Dense(d, prefix_len * d, ("embed", "tapper_out"), rngs=rngs)
    self.z_center = ZStats(jnp.full((d,), ZSTATS["z_center"], jnp.float32),
                           out_sharding=("embed",))
    self.z_scale = ZStats(jnp.full((), ZSTATS["z_scale"], jnp.float32))
    self.prefix_len, self.d, self.chunk = prefix_len, d, chunk
    self.time_decay, self.order_decay = time_decay, order_decay

  def standardize(self, z):
    c = jax.lax.stop_gradient(self.z_center[...])
    return (z - c) * jax.lax.stop_gradient(self.z_scale[...])

  def scores(self, z_q, hist_z, dt, gap):
    """Unmasked scores s [B,H'] for the slots given (a chunk or the whole history)."""
    zq = jnp.broadcast_to(z_q[:, None, :], hist_z.shape)
    feats = jnp.concatenate([zq, hist_z, zq - hist_z, zq * hist_z], axis=-1)  # [B,H',4D]
    s = self.score_out(jax.nn.gelu(self.score_in(feats), approximate=False))[..., 0]  # torch nn.GELU
    if self.time_decay:
      s = s - self.lambda_t[...] * jnp.log1p(dt)
    if self.order_decay:
      s = s - self.lambda_o[...] * jnp.log1p(gap)
    return s

  def weights(self, z_q, hist_z, hist_age, hist_valid):
    """Attention weights a [B,H], unchunked (rows sum to 1, or to 0 with no history).

    z_q [B,D]; hist_z [B,H,D] oldest first, left-aligned; hist_age [B,H] days from the record
    to the query; hist_valid [B,H] (False = padding).
    """
    dt, gap = decay_inputs(hist_age, hist_valid)
    z_q, hist_z = self.standardize(z_q), self.standardize(hist_z)
    s = jnp.where(hist_valid, self.scores(z_q, hist_z, dt, gap), _NEG)
    m = jnp.max(s, axis=1, keepdims=True)
    e = jnp.where(hist_valid, jnp.exp(s - m), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=1, keepdims=True), 1e-30)

  def context(self, z_q, hist_z, hist_age, hist_valid):
    """sum_j a_j z_j [B,D] (standardized z) by a streaming softmax over chunks of `chunk` slots."""
    b, h, d = hist_z.shape
    z_q, hist_z = self.standardize(z_q), self.standardize(hist_z)
    c = min(self.chunk, h)
    if h % c:
      raise ValueError(f"history slots H={h} must be a multiple of the attention chunk {c}")
    dt, gap = decay_inputs(hist_age, hist_valid)

    def chunked(x):  # [B,H,...] -> [H/C, B, C, ...]
      return jnp.swapaxes(x.reshape(b, h // c, c, *x.shape[2:]), 0, 1)

    def body(carry, xs):
      m, l, acc = carry
      z, t, g, v = xs
      s = jnp.where(v, self.scores(z_q, z, t, g), _NEG)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      scale = jnp.exp(m - m_new)
      e = jnp.where(v, jnp.exp(s - m_new[:, None]), 0.0)
      l = l * scale + jnp.sum(e, axis=1)
      acc = acc * scale[:, None] + jnp.einsum("bc,bcd->bd", e, z)
      return (m_new, l, acc), None

    init = (jnp.full((b,), _NEG, jnp.float32), jnp.zeros((b,), jnp.float32),
            jnp.zeros((b, d), jnp.float32))
    (_, l, acc), _ = jax.lax.scan(body, init, tuple(
        chunked(x) for x in (hist_z, dt, gap, hist_valid)))
    return acc / jnp.maximum(l, 1e-30)[:, None]

  def __call__(self, z_q, hist_z, hist_age, hist_valid):
    """-> P_q [B,L,D]."""
    ctx = self.context(z_q, hist_z, hist_age, hist_valid)
    return self.proj(ctx).reshape(ctx.shape[0], self.prefix_len, self.d)
