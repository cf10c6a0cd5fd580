"""The user prefix table kept in host memory (`stage2.table_memory = "host"`).

With millions of users the table and its two AdamW moments outgrow accelerator memory
(1M users x L=8 x D=4096 x 4 bytes x 3 = 393 GB for a Llama-3.1-8B width) while a step needs only
its batch's rows. Here the table, its moments and each row's last-update step live in numpy on
the host, as large embedding tables are trained beside an accelerator:
  1. before a step the host gathers the batch's distinct rows (weights, moments, last step) into
     [B, L, D] blocks that travel with the batch, and remaps the batch's user rows into them;
  2. the device runs the model on those rows and takes the row-wise AdamW step of
     training/sparse_table.py on them (same rule, same numbers as `sparse_table` on device);
  3. the host writes the updated rows back. No other row is read or written.
So device memory and step time do not depend on the number of users. Evaluation still places
the table (without its moments) on the mesh, sharded over `users`.

Every process holds the whole table (its memory is the host's, not the devices'): each applies
the same replicated update, with the distinct rows of the global batch (gathered across
processes), so the copies never diverge.

The checkpoint layout is the device row-wise state's ({"table": ..., "sparse": {"m", "v",
"last"}}), so a checkpoint moves between `table_memory = "host"` and `"device"` either way.

Shapes: U table rows, B global batch rows, L prefix length, D width.
"""

from __future__ import annotations

import jax
import numpy as np

INIT_STD = 0.02  # the paper's N(0, 0.02) (as tapper/prefix.py draws on device)


class HostTable:
  """The [U, L, D] table, its moments and the [U] last-update steps, in numpy."""

  def __init__(self, abstract: dict, table, m, v, last):
    """`abstract`: the device row-wise state's abstract {"table": ..., "sparse": ...} (for the
    tree layout of checkpoints and of the model's table)."""
    self.abstract = abstract
    self.table, self.m, self.v = table, m, v
    self.last = last

  @classmethod
  def fresh(cls, abstract: dict, seed: int) -> "HostTable":
    """Rows drawn N(0, INIT_STD) in float32, a block at a time (no float64 copy of the table)."""
    (t,) = jax.tree.leaves(abstract["table"])
    table = np.empty(t.shape, np.float32)
    rng = np.random.default_rng(seed)
    step = max(1, (1 << 24) // max(1, int(np.prod(t.shape[1:]))))
    for lo in range(0, t.shape[0], step):
      table[lo:lo + step] = rng.normal(0.0, INIT_STD, table[lo:lo + step].shape)
    return cls(abstract, table.astype(t.dtype, copy=False), np.zeros(t.shape, t.dtype),
               np.zeros(t.shape, t.dtype), np.zeros(t.shape[:1], np.int32))

  @classmethod
  def empty(cls, abstract: dict) -> "HostTable":
    """Unfilled arrays of the right shapes: a restore target (pages are only touched when read)."""
    (t,) = jax.tree.leaves(abstract["table"])
    return cls(abstract, *(np.empty(t.shape, t.dtype) for _ in range(3)),
               np.empty(t.shape[:1], np.int32))

  @classmethod
  def from_state(cls, abstract: dict, state: dict) -> "HostTable":
    """From a row-wise state's "table" and "sparse" entries (device or numpy leaves)."""
    (table,) = jax.tree.leaves(state["table"])
    (m,), (v,) = jax.tree.leaves(state["sparse"]["m"]), jax.tree.leaves(state["sparse"]["v"])
    last = state["sparse"]["last"][...]
    return cls(abstract, *(np.array(jax.device_get(x)) for x in (table, m, v, last)))

  def state(self) -> dict:
    """{"table": ..., "sparse": {"m", "v", "last"}} in the device row-wise layout (numpy leaves,
    not copies): what a checkpoint saves."""
    return {"table": self._tree(self.table),
            "sparse": {"m": self._tree(self.m), "v": self._tree(self.v),
                       "last": self.abstract["sparse"]["last"].replace(value=self.last)}}

  def _tree(self, x):
    return jax.tree.unflatten(jax.tree.structure(self.abstract["table"]), [x])

  def gather(self, local_rows, global_rows):
    """(rows {"w", "m", "v" [B,L,D], "last" [B]}, uniq [B] (-1 = padding), local_rows remapped
    into the gathered rows (-1 stays -1: an unknown user keeps P_u = 0)).

    `local_rows`: this process's batch rows; `global_rows`: the whole global batch's."""
    global_rows, local_rows = np.asarray(global_rows), np.asarray(local_rows)
    b = len(global_rows)
    known = np.unique(global_rows[global_rows >= 0])
    uniq = np.full((b,), -1, np.int64)
    uniq[:len(known)] = known
    remap = np.where(local_rows >= 0, np.searchsorted(known, np.maximum(local_rows, 0)), -1)
    safe = np.maximum(uniq, 0)
    rows = {"w": self.table[safe], "m": self.m[safe], "v": self.v[safe], "last": self.last[safe]}
    return rows, uniq, remap.astype(np.int32)

  def scatter(self, uniq, rows: dict, step: int) -> None:
    """Writes the updated rows of `uniq` back; their last-update step becomes `step` + 1."""
    keep = np.asarray(uniq) >= 0
    idx = np.asarray(uniq)[keep]
    self.table[idx] = np.asarray(rows["w"])[keep]
    self.m[idx] = np.asarray(rows["m"])[keep]
    self.v[idx] = np.asarray(rows["v"])[keep]
    self.last[idx] = step + 1

  @property
  def nbytes(self) -> int:
    return sum(x.nbytes for x in (self.table, self.m, self.v, self.last))
