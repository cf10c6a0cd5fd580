"""Logical axis names -> mesh axes, from one rules table.

Model code names axes logically ("batch", "embed", "vocab", ...) on parameters (Variable
metadata `out_sharding`) and on key activations (`constrain`). Which mesh axis each logical
name lands on is decided once, by a rules table such as::

    (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("users", "data"))

Names without a rule stay replicated. Outside `use_rules(...)` every constraint is a no-op, so
single-device code pays nothing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


class _Ctx(threading.local):
  mesh: Mesh | None = None
  rules: Rules = ()


_CTX = _Ctx()


@contextlib.contextmanager
def use_rules(mesh: Mesh | None, rules: Rules):
  """Within this context, `constrain` shards activations on `mesh` by `rules`."""
  old = (_CTX.mesh, _CTX.rules)
  _CTX.mesh, _CTX.rules = mesh, tuple(rules)
  try:
    yield
  finally:
    _CTX.mesh, _CTX.rules = old


def logical_to_spec(names: Sequence[str | None] | None, rules: Rules) -> PartitionSpec:
  """("batch", "embed") -> PartitionSpec(("data","fsdp"), "fsdp") by the rules; no mesh axis twice."""
  if names is None:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; no-op outside `use_rules`."""
  if _CTX.mesh is None:
    return x
  spec = logical_to_spec(names, _CTX.rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(_CTX.mesh, spec))


def fitted_spec(shape, names, rules: Rules, mesh: Mesh) -> PartitionSpec:
  """`logical_to_spec`, minus mesh axes that do not divide their dimension (left replicated)."""
  spec = logical_to_spec(names, rules)
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    kept, size = [], 1
    for a in axes:
      if dim % (size * mesh.shape[a]) == 0:
        kept.append(a)
        size *= mesh.shape[a]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*out)


def state_shardings(abstract_state, mesh: Mesh, rules: Rules):
  """NamedSharding for every leaf of an (abstract) pytree: Variables by their `out_sharding`
  metadata (fitted to their shape), anything else (step counters, keys) replicated."""
  from flax import nnx  # local: keep this module importable without touching flax state

  def one(v):
    if isinstance(v, nnx.Variable) and hasattr(v.get_value(), "shape"):
      names = v.get_metadata().get("out_sharding")
      return NamedSharding(mesh, fitted_spec(v.get_value().shape, names, rules, mesh))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
