"""Orbax checkpoints of what we train: one CheckpointManager per stage.

Items of a step: "state" (trainable params, optimizer state, step, RNG), "prefix" (the user
prefix table, restorable alone for serving), "users" (its user-id -> row map, JSON), "data" (the
grain iterator state, JSON). Orbax writes each step to a temporary folder and renames it when
complete, so no checkpoint is ever overwritten in place. Restore targets an abstract tree whose
leaves carry the shardings wanted, so arrays come back already laid out on the mesh.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

ITEMS = ("state", "prefix", "users", "data")


def _target(abstract_state: dict, shardings: dict):
  """The abstract state with each array leaf a ShapeDtypeStruct carrying its sharding."""
  def one(a, s):
    if isinstance(a, nnx.Variable):
      v = a.get_value()
      if not hasattr(v, "shape"):  # optax's MaskedNode: an empty placeholder
        return a
      return a.replace(value=jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s))
    if not hasattr(a, "shape"):
      return a
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

  return jax.tree.map(one, abstract_state, shardings,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def _restore_args(x):
  return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype) \
      if isinstance(x, jax.ShapeDtypeStruct) else ocp.RestoreArgs()


def _fill_absent(params):
  """Params a checkpoint lacks (it was written before they existed) set to the value that
  reproduces what it was trained with (`tapper.attention.ZSTATS`); any other absent param is
  an error naming it."""
  from tapper_jax.tapper.attention import ZSTATS
  from tapper_jax.training.steps import param_path
  missing = []

  def fill(path, leaf):
    if not isinstance(leaf, jax.ShapeDtypeStruct):
      return leaf
    name = param_path(path)[-1:]
    if not name or name[0] not in ZSTATS:
      missing.append(jax.tree_util.keystr(path))
      return leaf
    return jax.device_put(jax.numpy.full(leaf.shape, ZSTATS[name[0]], leaf.dtype), leaf.sharding)

  out = jax.tree_util.tree_map_with_path(fill, params,
                                         is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  if missing:
    raise KeyError(f"the checkpoint holds no value for {missing}")
  return out


class Checkpoints:
  def __init__(self, directory: str, *, keep: int):
    directory = os.path.abspath(directory)  # Orbax refuses relative checkpoint paths
    self.directory = directory
    self.manager = ocp.CheckpointManager(
        directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, id_map: dict[str, int], data_state) -> None:
    rest = {k: v for k, v in state.items() if k != "table"}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(rest),
        prefix=ocp.args.StandardSave({"table": state["table"]}),
        users=ocp.args.JsonSave(id_map),
        data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, abstract_state: dict, shardings: dict, host: dict | None = None):
    """(state, id_map, data_state) of `step`, laid out by `shardings` (same tree as the state).
    `host`: entries of the state restored as numpy instead, into arrays shaped like its leaves
    (a host-memory table: training/host_table.py)."""
    target = {**_target(abstract_state, shardings), **(host or {})}
    rest = {k: v for k, v in target.items() if k != "table"}
    got = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(rest),
        prefix=ocp.args.StandardRestore({"table": target["table"]}),
        users=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    state = {**got["state"], "table": got["prefix"]["table"]}
    return state, dict(got["users"]), got["data"]

  def restore_params(self, step: int, abstract_state: dict, shardings: dict):
    """(params, table, id_map) of `step`: what serving needs, without the optimizer state, so a
    checkpoint written under another optimizer layout (e.g. before an optimizer group was added)
    still serves, and a large table's moments are never read."""
    target = _target(abstract_state, shardings)
    params = {"params": target["params"]}
    # A manager of its own: one that restored "state" whole has that item's handler fixed.
    reader = ocp.CheckpointManager(self.directory, item_names=ITEMS)
    got = reader.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=params, partial_restore=True,
            restore_args=jax.tree.map(_restore_args, params,
                                      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))),
        prefix=ocp.args.StandardRestore({"table": target["table"]}),
        users=ocp.args.JsonRestore()))
    reader.close()
    return _fill_absent(got["state"]["params"]), got["prefix"]["table"], dict(got["users"])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def restore_on_host(directory: str, step: int | None = None,
                    items: tuple[str, ...] = ("state", "prefix")) -> tuple[int, dict]:
  """(step, item -> tree) of a checkpoint, every array on this process's first device, whatever
  the device count or mesh it was saved from (8 devices -> 1, a pod -> a laptop)."""
  directory = os.path.abspath(directory)  # Orbax refuses relative checkpoint paths
  manager = ocp.CheckpointManager(directory, item_names=ITEMS)
  step = manager.latest_step() if step is None else step
  manager.close()
  if step is None:
    raise FileNotFoundError(f"{directory}: no checkpoint")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  out = {}
  for item in items:
    path = os.path.join(directory, str(step), item)
    reader = ocp.StandardCheckpointer()
    meta = reader.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    out[item] = reader.restore(path, target)
    reader.close()
  return step, out


def load_prefix_table(directory: str, step: int | None = None):
  """(table [rows, L, D] numpy, user id -> row) from a stage-2 checkpoint folder, without the
  model or the optimizer state: what serving and export need. `step` defaults to the newest.
  Any device count it was saved from restores here."""
  import numpy as np
  directory = os.path.abspath(directory)
  step, got = restore_on_host(directory, step, ("prefix",))
  manager = ocp.CheckpointManager(directory, item_names=ITEMS)
  users = manager.restore(step, args=ocp.args.Composite(users=ocp.args.JsonRestore()))["users"]
  manager.close()
  (table,) = jax.tree.leaves(got["prefix"])
  return np.asarray(table), dict(users)
