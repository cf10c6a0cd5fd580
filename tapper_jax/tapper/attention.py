"""Temporal attention over a user's record history -> the query-conditioned prefix P_q.

  s_j = MLP([z_q; z_j; z_q - z_j; z_q * z_j]) - lambda_t log(1 + dt_j) - lambda_o log(1 + gap_j)
  a   = softmax_j(s) over records that are real (not padding) and strictly older than the query
  P_q = Linear(D -> L*D)(sum_j a_j z_j)

dt_j is the record's age in days at the query's time; gap_j its rank gap from the newest usable
record (0 for the newest), counted after masking so padding and newer records never shift it.
A user with no usable history gets a = 0, so P_q is the projection's bias alone.

Einsum letters: B batch, H history slots, D hidden (model width), F score-MLP hidden (= D),
L prefix length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _init(key, shape, std=0.02):
  return std * jax.random.normal(key, shape, jnp.float32)


class Dense(nnx.Module):
  """y = x W + b with logical axis names on W (float32: these weights are small)."""

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(_init(rngs.params(), (d_in, d_out)), out_sharding=axes)
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32), out_sharding=axes[1:])

  def __call__(self, x):
    return jnp.einsum("...i,io->...o", x, self.kernel[...]) + self.bias[...]


class TemporalAttention(nnx.Module):
  def __init__(self, d: int, prefix_len: int, *, lambda_init: float = 0.1, rngs: nnx.Rngs):
    if prefix_len <= 0:
      raise ValueError(f"prefix length L must be positive, got {prefix_len}")
    self.score_in = Dense(4 * d, d, ("tapper_in", "tapper_hidden"), rngs=rngs)
    self.score_out = Dense(d, 1, ("tapper_hidden", None), rngs=rngs)
    self.lambda_t = nnx.Param(jnp.asarray(lambda_init, jnp.float32))
    self.lambda_o = nnx.Param(jnp.asarray(lambda_init, jnp.float32))
    self.proj = Dense(d, prefix_len * d, ("embed", "tapper_out"), rngs=rngs)
    self.prefix_len, self.d = prefix_len, d

  def weights(self, z_q, hist_z, hist_age, hist_valid):
    """Attention weights a [B,H] (rows sum to 1, or to 0 with no usable record).

    z_q [B,D]; hist_z [B,H,D] oldest first; hist_age [B,H] days (<= 0: not older than the
    query, masked); hist_valid [B,H] (False = padding, masked).
    """
    usable = hist_valid & (hist_age > 0)
    zq = jnp.broadcast_to(z_q[:, None, :], hist_z.shape)
    feats = jnp.concatenate([zq, hist_z, zq - hist_z, zq * hist_z], axis=-1)  # [B,H,4D]
    s = self.score_out(jax.nn.gelu(self.score_in(feats)))[..., 0]
    dt = jnp.where(usable, hist_age, 0.0)
    # gap_j = usable records after j (the history is oldest first): a reverse cumulative sum.
    after = jnp.cumsum(usable[:, ::-1].astype(jnp.float32), axis=1)[:, ::-1] - usable
    s = s - self.lambda_t[...] * jnp.log1p(dt) - self.lambda_o[...] * jnp.log1p(after)
    s = jnp.where(usable, s, -jnp.inf)
    m = jnp.max(s, axis=1, keepdims=True)
    e = jnp.where(usable, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=1, keepdims=True), 1e-30)

  def __call__(self, z_q, hist_z, hist_age, hist_valid):
    """-> P_q [B,L,D] and the attention weights [B,H]."""
    a = self.weights(z_q, hist_z, hist_age, hist_valid)
    ctx = jnp.einsum("bh,bhd->bd", a, hist_z)
    p = self.proj(ctx).reshape(ctx.shape[0], self.prefix_len, self.d)
    return p, a
