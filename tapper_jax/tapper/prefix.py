"""The user-state prefix table P_u: one [L, D] row per known user, N(0, 0.02) at init.

The table is [U, L, D] with a `users` logical axis, so a rules table can shard it over the
mesh when users number in the millions. Row -1 is the unknown user: P_u = 0 (cold start).
`PrefixTable` is its own Variable type so that training splits, optimises and checkpoints the
table as its own item.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class PrefixTable(nnx.Param):
  """The [U, L, D] user-state table (a Param, so optimisers see it; its own type for filters)."""


class UserPrefixTable(nnx.Module):
  def __init__(self, num_rows: int, prefix_len: int, d: int, *, rngs: nnx.Rngs):
    if prefix_len <= 0:
      raise ValueError(f"prefix length L must be positive, got {prefix_len}")
    if num_rows <= 0:
      raise ValueError(f"the prefix table needs at least one user row, got {num_rows}")
    self.table = PrefixTable(0.02 * jax.random.normal(rngs.params(), (num_rows, prefix_len, d),
                                                      jnp.float32),
                             out_sharding=("users", "prefix", "embed"))

  def __call__(self, rows: jax.Array) -> jax.Array:
    """rows [B] int (-1 = unknown user) -> P_u [B,L,D]."""
    p = jnp.take(self.table[...], jnp.maximum(rows, 0), axis=0)
    return jnp.where((rows >= 0)[:, None, None], p, 0.0)


def user_rows(user_ids: Sequence[str], id_map: dict[str, int]) -> np.ndarray:
  """[B] int32 rows of the table; -1 for users the table does not know."""
  return np.asarray([id_map.get(u, -1) for u in user_ids], np.int32)
