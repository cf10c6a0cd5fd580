"""Row-wise (lazy) AdamW for the user prefix table: a step reads and writes only its batch's rows.

Dense AdamW touches all U rows at every step (moments, weight decay), so a step's cost grows
with the number of users. Here, as large embedding tables are trained, a step
  1. gathers the batch's distinct rows into a mini-table [B,L,D] (the model runs on it, its
     user rows remapped), so the gradient is formed for those rows only;
  2. updates each touched row's Adam moments with the global step's bias correction, and applies
     the weight decay the row missed while untouched at once: w <- w (1 - lr wd)^(t - last) (the
     current lr stands in for the skipped steps' lrs);
  3. scatters the rows back; every other row, and its moments, stay bit-identical.
For rows in every batch (or a single step from fresh moments) this equals dense AdamW; rows seen
once stop moving afterwards, where dense AdamW would keep moving them on their momentum.
Global-norm clipping sees the same gradient norm as dense (the untouched rows' gradients are 0).

Shapes: U table rows, B batch, L prefix length, D width.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class RowStep(nnx.Variable):
  """[U] int32: the step at which each row was last updated (0 = never)."""


@dataclasses.dataclass(frozen=True)
class SparseTableAdamW:
  lr: optax.Schedule
  weight_decay: float
  clip: float
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def init(self, table) -> dict:
    """Moments shaped (and sharded) like the table, and the per-row last-update step."""
    zeros = jax.tree.map(jnp.zeros_like, table)
    (t,) = jax.tree.leaves(table)
    return {"m": zeros, "v": jax.tree.map(jnp.zeros_like, table),
            "last": RowStep(jnp.zeros((t.shape[0],), jnp.int32), out_sharding=("users",))}

  @staticmethod
  def gather(table, rows):
    """(mini-table [B,L,D] as the table's tree, distinct rows [B] (-1 = none), rows remapped
    into the mini-table [B] (-1 stays -1: unknown users keep P_u = 0))."""
    b = rows.shape[0]
    uniq, inv = jnp.unique(rows, size=b, fill_value=-1, return_inverse=True)
    mini = jax.tree.map(lambda t: jnp.take(t, jnp.maximum(uniq, 0), axis=0), table)
    return mini, uniq, jnp.where(rows >= 0, inv.reshape(rows.shape), -1)

  def clipped(self, grads, grad_norm):
    """The global-norm clip optax.clip_by_global_norm applies (same norm, same rule)."""
    return jax.tree.map(
        lambda g: jnp.where(grad_norm < self.clip, g, g / grad_norm * self.clip), grads)

  def step_rows(self, w, m, v, g, last, step):
    """One lazy AdamW step of gathered rows: w, m, v, g [B,L,D] (a row's weights, moments and
    clipped gradient), last [B] (each row's last-update step) -> new (w, m, v). The weight decay a
    row missed while untouched is applied at once (the current lr stands in for the skipped
    steps' lrs)."""
    t = step + 1
    lr = self.lr(step)
    decay = (1.0 - lr * self.weight_decay) ** (t - last).astype(jnp.float32)  # [B]
    m = self.b1 * m + (1 - self.b1) * g
    v = self.b2 * v + (1 - self.b2) * g * g
    m_hat = m / (1 - self.b1 ** t)
    v_hat = v / (1 - self.b2 ** t)
    w = w * decay[:, None, None] - lr * m_hat / (jnp.sqrt(v_hat) + self.eps)
    return w, m, v

  def update(self, table, state: dict, uniq, mini_grads, step):
    """(table, state) after one lazy AdamW step on rows `uniq` (entries -1 are skipped)."""
    t = step + 1
    (u,) = {x.shape[0] for x in jax.tree.leaves(table)}
    idx = jnp.where(uniq >= 0, uniq, u)  # out of range: dropped by the scatters
    safe = jnp.maximum(uniq, 0)
    last = state["last"][...]
    last_rows = jnp.take(last, safe)

    def rows_update(w, m, v, g):
      rows = self.step_rows(*(jnp.take(x, safe, axis=0) for x in (w, m, v)), g, last_rows, step)
      return tuple(x.at[idx].set(r.astype(x.dtype), mode="drop") for x, r in zip((w, m, v), rows))

    new = jax.tree.map(rows_update, table, state["m"], state["v"], mini_grads)
    pick = lambda i: jax.tree.map(lambda x: x[i], new, is_leaf=lambda x: isinstance(x, tuple))  # noqa: E731
    last = state["last"].replace(value=last.at[idx].set(t, mode="drop"))
    return pick(0), {"m": pick(1), "v": pick(2), "last": last}
