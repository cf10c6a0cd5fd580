"""The application API over a trained TAP-PER workdir: generate for a user, add users, update a
user online (the paper's online update: a few gradient steps on that user's P_u row alone,
everything else frozen), and look at the attention over a user's history.

  p = Personalizer.load("runs/hp2n")
  p.add_user("new-user", [Record("r1", "2024-05-01", day, {"text": ..., "category": ...})])
  p.generate("new-user", "Which category ...? article: ...", day=19500.0)
  p.update_user("new-user", [Record(...)], steps=5)     # fits the user's P_u row only
  p.save()                                              # a new table version

A user's history is the run's profile for them (from its evaluated split) plus what
`add_user` / `update_user` added, sorted by date. Table versions are folders
WORKDIR/serving/tables/vN/ (table.safetensors + users.json), each written to a temporary folder
and renamed; earlier versions stay, and `load(version=N)` restores any of them. A new user gets
a new row at the end: the rows before it are never rewritten.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tapper_jax.data.lamp import Record
from tapper_jax.fileio import atomic_folder
from tapper_jax.training.defaults import table_learning_rate


def _versions(folder: str) -> list[int]:
  if not os.path.isdir(folder):
    return []
  return sorted(int(d[1:]) for d in os.listdir(folder) if d[:1] == "v" and d[1:].isdigit())


class Personalizer:
  def __init__(self, trained, histories: dict[str, list[Record]], table: np.ndarray,
               users: list[str], workdir: str, version: int):
    self.t, self.histories, self.workdir, self.version = trained, histories, workdir, version
    self.table = table  # [U, L, D] float32, row i = users[i]
    self.users = list(users)
    self._graphdef = None

  # -- loading and saving ---------------------------------------------------------------------

  @classmethod
  def load(cls, workdir: str, *, version: int | None = None) -> "Personalizer":
    """The run's model; the prefix table of `version` (default: the newest saved, else the
    trained one); each evaluated user's history from the run's evaluated split."""
    from safetensors.numpy import load_file
    from tapper_jax.serving import trained as trained_lib
    from tapper_jax.serving.inspect_user import _questions
    from tapper_jax.training import examples as ex
    t = trained_lib.load(workdir, progress=False)
    if t.config.method != "tapper" or getattr(t.model.tapper, "users", None) is None:
      raise ValueError(f"{workdir}: the Personalizer needs a TAP-PER run with a user table")
    versions = _versions(os.path.join(workdir, "serving", "tables"))
    if version is None and versions:
      version = versions[-1]
    if version:
      folder = os.path.join(workdir, "serving", "tables", f"v{version}")
      table = load_file(os.path.join(folder, "table.safetensors"))["table"]
      with open(os.path.join(folder, "users.json"), encoding="utf-8") as f:
        users = json.load(f)
    else:
      users = sorted(t.id_map, key=t.id_map.get)
      table = np.asarray(t.model.tapper.users.table[...], np.float32)[: len(users)]
    qs, _ = _questions(t, None)
    histories: dict[str, list[Record]] = {}
    for u, profile in ex.earliest_profiles(qs).items():
      histories[u] = list(profile)
    return cls(t, histories, np.array(table), users, workdir, version or 0)

  def save(self) -> int:
    """Writes the table as a new version; returns its number (earlier versions stay)."""
    from safetensors.numpy import save_file
    root = os.path.join(self.workdir, "serving", "tables")
    version = (_versions(root) or [0])[-1] + 1
    with atomic_folder(os.path.join(root, f"v{version}")) as tmp:
      save_file({"table": np.ascontiguousarray(self.table)},
                os.path.join(tmp, "table.safetensors"))
      with open(os.path.join(tmp, "users.json"), "w", encoding="utf-8") as f:
        json.dump(self.users, f)
    self.version = version
    return version

  # -- users ----------------------------------------------------------------------------------

  def add_user(self, user_id: str, records: Sequence[Record]) -> None:
    """A cold-start user: a history, no row (P_u = 0) until `update_user` fits one."""
    if user_id in self.histories or user_id in self.users:
      raise ValueError(f"user {user_id!r} exists; use update_user to add records")
    self.histories[user_id] = sorted(_checked(records, user_id), key=lambda r: r.day)

  def _row(self, user_id: str) -> int:
    return self.users.index(user_id) if user_id in self.users else -1

  def _examples(self, user_id: str, query: str, day: float):
    from tapper_jax.training import examples as ex
    hist = self.histories.get(user_id, [])
    visible = [r for r in hist if r.day <= day]
    spec = self.t.spec
    return ex.Example("query", user_id, query, "", spec.query(query), day,
                      tuple(r.id for r in visible), spec.keep(query)), visible

  def _fields(self, examples, records_by_user, user_rows: dict[str, int]):
    from tapper_jax.tapper.bank import RecordBank, mean_embedder
    from tapper_jax.training import examples as ex
    s2 = self.t.config.stage2
    table = np.asarray(jax.device_get(self.t.llm.model.embed_tokens.embedding.get_value()))
    embed = mean_embedder(self.t.tokenizer, table, s2.record_tokens)
    bank = RecordBank.build({u: [(r.id, self.t.spec.record_text(r.fields), r.day) for r in rs]
                             for u, rs in records_by_user.items()}, embed)
    slots = ex.history_slots([examples], s2.max_history, s2.attention_chunk)
    return ex.HistoryFields(examples, bank, ex.embed_queries(examples, embed), user_rows, slots,
                            s2.max_history)

  def _model(self, table: np.ndarray):
    """The trained model with `table` as its prefix table (shapes may differ: one graph)."""
    from tapper_jax.tapper.prefix import PrefixTable
    graphdef, old, rest = nnx.split(self.t.model, PrefixTable, ...)
    new = jax.tree.map(lambda _: jnp.asarray(table), old)
    return nnx.merge(graphdef, new, rest)

  def generate(self, user_id: str, query: str, *, day: float) -> str:
    """Greedy answer for `user_id` (unknown or row-less users run cold: P_u = 0)."""
    from tapper_jax.training import evaluation
    e, visible = self._examples(user_id, query, day)
    fields = self._fields([e], {user_id: visible}, {user_id: self._row(user_id)})
    with self.t.rules():
      return evaluation.predict(self._model(self.table), [e], self.t.prompts, self.t.config,
                                fields.fields)[0]

  def attention(self, user_id: str, query: str, *, day: float) -> list[tuple[str, float]]:
    """(record id, weight) over the user's history visible at `day`, oldest first."""
    from tapper_jax.training.plots import history_weights
    e, visible = self._examples(user_id, query, day)
    fields = self._fields([e], {user_id: visible}, {user_id: self._row(user_id)})
    _, w = history_weights(self.t.model, fields.fields(0))
    return [(r.id, float(x)) for r, x in zip(visible, w)]

  def update_user(self, user_id: str, new_records: Sequence[Record], *, steps: int = 5,
                  learning_rate: float | None = None, seed: int = 0) -> dict:
    """The online update: adds `new_records` to the user's history, then fits only that user's
    P_u row for `steps` AdamW steps on their records (each with its earlier records as
    history). Every other row stays bit-identical; a user without a row gets one at the end of
    the table (N(0, 0.02), as in training). Returns the loss before and after."""
    from tapper_jax.training import examples as ex
    from tapper_jax.training.loop import HOST_ONLY
    if user_id not in self.histories and self._row(user_id) < 0:
      raise KeyError(f"unknown user {user_id!r}: add them first with add_user(user_id, records)")
    hist = sorted(list(self.histories.get(user_id, [])) + _checked(new_records, user_id),
                  key=lambda r: r.day)
    self.histories[user_id] = hist
    spec, config = self.t.spec, self.t.config
    examples = []
    for i, r in enumerate(hist):
      made = spec.record_example(r.fields)
      if made is not None:
        examples.append(ex.Example(f"{user_id}/{r.id}", user_id, made[0], made[1],
                                   spec.query(made[0]), r.day, tuple(p.id for p in hist[:i]),
                                   spec.keep(made[0])))
    if not examples:
      raise ValueError(f"user {user_id!r}: none of their records makes a training example")
    row = self._row(user_id)
    if row < 0:
      shape = self.table.shape[1:]
      init = 0.02 * np.asarray(jax.random.normal(jax.random.PRNGKey(seed), shape), np.float32)
      self.table = np.concatenate([self.table, init[None]], axis=0)
      self.users.append(user_id)
      row = len(self.users) - 1
    fields = self._fields(examples, {user_id: hist}, {user_id: 0})
    bsz = min(config.stage2.batch_size, len(examples))
    online = config.copy_and_resolve_references()  # a few rows: whole batches, the row's step
    online.stage2.batch_size = bsz
    online.train_micro_batches, online.train_unpad = 1, 0
    it = iter(ex.train_dataset(examples, self.t.prompts, online, online.stage2, seed=seed,
                               history=fields))
    from tapper_jax.tapper.prefix import PrefixTable
    # The model with a one-row table (this user's, at row 0); only that row is differentiated.
    graphdef, table_state, rest = nnx.split(self._model(self.table[row:row + 1]), PrefixTable,
                                            ...)
    lr = learning_rate or table_learning_rate(config.stage2)
    p = jnp.asarray(self.table[row:row + 1])
    opt = _row_tx(lr, config.stage2.weight_decay).init(p)
    losses = []
    with self.t.rules():
      for _ in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(it).items() if k not in HOST_ONLY}
        p, opt, value = _row_step(graphdef, table_state, p, opt, rest, batch, lr,
                                  config.stage2.weight_decay)
        losses.append(float(value))
      final = float(_row_loss(graphdef, table_state, p, rest, batch))
    self.table = self.table.copy()  # a new array: other rows keep their exact bits
    self.table[row] = np.asarray(p)[0]
    return {"user": user_id, "row": row, "examples": len(examples), "steps": steps,
            "losses": losses, "final_loss": final}


def _checked(records: Sequence[Record], user_id: str) -> list[Record]:
  """The records, each with a finite day (days since the epoch); else an error naming it."""
  import math
  for i, r in enumerate(records):
    if not isinstance(r.day, (int, float)) or not math.isfinite(r.day):
      raise ValueError(f"user {user_id!r}, record {i} (id {r.id!r}), field 'day': {r.day!r} "
                       "is not a finite number of days (see data.lamp.parse_day for dates)")
  return list(records)


def _row_tx(lr, weight_decay):
  return optax.adamw(lr, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _row_loss(graphdef, table_state, p, rest, batch):
  """The LM loss with the one-row table replaced by p [1,L,D]."""
  from tapper_jax.tapper.model import lm_loss
  model = nnx.merge(graphdef, jax.tree.map(lambda _: p, table_state), rest)
  return lm_loss(model, batch)[0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _row_step(graphdef, table_state, p, opt, rest, batch, lr, weight_decay):
  """One AdamW step on the row p alone. Module-level and jitted once per batch shape, so every
  user's update after the first reuses the compiled step."""
  value, g = jax.value_and_grad(lambda q: _row_loss(graphdef, table_state, q, rest, batch))(p)
  updates, opt = _row_tx(lr, weight_decay).update(g, opt, p)
  return optax.apply_updates(p, updates), opt, value
