"""The optimizer and the pure train step (jitted once, explicit shardings, donated state).

Train state (a pytree): {"params": LoRA + TAP-PER module, "table": the user prefix table,
"opt": optimizer state, "step": int32, "rng": PRNG key data}. The frozen backbone is a separate
argument and is never differentiated: `value_and_grad` runs over the trainable dict only, so
no gradient of a frozen weight is ever formed (XLA computes only the input gradients it needs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tapper_jax.data.pipeline import TOKEN_AXIS
from tapper_jax.models.llama import LlamaForCausalLM
from tapper_jax.tapper.attention import ZSTATS
from tapper_jax.tapper.model import lm_loss
from tapper_jax.training import setup
from tapper_jax.training.defaults import table_learning_rate
from tapper_jax.training.sparse_table import SparseTableAdamW


def schedule(peak: float, warmup: int, steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `peak`, then linear decay to 0 at `steps`."""
  decay = optax.linear_schedule(peak, 0.0, max(steps - warmup, 1))
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


FIXED_PARAMS = frozenset(ZSTATS)  # tapper.attention.ZStats: never updated


def param_path(path) -> tuple[str, ...]:
  """A parameter's name from a pytree key path: its dict keys (a Variable's value sits under a
  GetAttrKey, which is dropped), e.g. ("tapper", "attention", "z_center")."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def optimizer(stage_cfg, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with a global grad-norm clip over `steps`; the prefix table and the decay lambdas
  take their own learning rates (`table_learning_rate`, `lambda_learning_rate`; 0 = the shared
  one). Weight decay on every kernel, LoRA factor and the table, not on biases or the lambdas
  (as the Hugging Face Trainer of the official code: no decay on names holding "bias"). With
  `sparse_table` the table is left to `sparse_table_fn` (row-wise AdamW): here it only counts in
  the clip's norm. Fixed statistics among the params (TAP-PER's z_center, z_scale) take a zero
  update: no weight decay either."""
  warmup = int(round(stage_cfg.warmup * steps))
  lr = schedule(stage_cfg.learning_rate, warmup, steps)
  lambda_lr = schedule(stage_cfg.get("lambda_learning_rate", 0.0) or stage_cfg.learning_rate,
                       warmup, steps)

  def param_label(path, _):
    names = set(param_path(path))
    if names & FIXED_PARAMS:
      return "fixed"
    return "lambda" if names & {"lambda_t", "lambda_o"} else "rest"

  def labels(t):
    return {"params": jax.tree_util.tree_map_with_path(param_label, t["params"]),
            "table": jax.tree.map(lambda _: "table", t["table"])}

  def decayed(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: "bias" not in param_path(p), params)

  wd = stage_cfg.weight_decay
  table_tx = optax.set_to_zero() if rowwise_table(stage_cfg) else \
      optax.adamw(table_schedule(stage_cfg, steps), weight_decay=wd)
  tx = optax.chain(
      optax.clip_by_global_norm(stage_cfg.grad_clip),
      optax.multi_transform({"rest": optax.adamw(lr, weight_decay=wd, mask=decayed),
                             "lambda": optax.adamw(lambda_lr, weight_decay=0.0),
                             "table": table_tx, "fixed": optax.set_to_zero()}, labels))
  return tx, lr


def table_schedule(stage_cfg, steps: int) -> optax.Schedule:
  warmup = int(round(stage_cfg.warmup * steps))
  return schedule(table_learning_rate(stage_cfg), warmup, steps)


def on_host(stage_cfg) -> bool:
  """Whether the stage keeps its prefix table in host memory (training/host_table.py)."""
  return stage_cfg.get("table_memory", "device") == "host"


def rowwise_table(stage_cfg) -> bool:
  """Whether the table takes the row-wise optimizer: asked for, or implied by a host table."""
  return bool(stage_cfg.get("sparse_table", False)) or on_host(stage_cfg)


def sparse_table_fn(stage_cfg, steps: int) -> SparseTableAdamW | None:
  """The row-wise table optimizer where the stage asks for it (`sparse_table`, or a host
  table), else None."""
  if not rowwise_table(stage_cfg):
    return None
  return SparseTableAdamW(table_schedule(stage_cfg, steps), stage_cfg.weight_decay,
                          stage_cfg.grad_clip)


def init_state_fn(cfg, config, stage: int, num_rows: int, tx,
                  sparse: SparseTableAdamW | None = None):
  """(graphdef, key -> fresh train state). `init` is traced under jit, where the random backbone
  it builds is dead code; the graphdef comes from the same builder, traced abstractly."""

  def model(key):
    return setup.build_model(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), config, stage, num_rows, key)

  def init(key):
    k_model, k_rng = jax.random.split(key)
    _, table, params, _ = setup.split(model(k_model))
    trainable = {"params": params, "table": table}
    state = {**trainable, "opt": tx.init(trainable), "step": jnp.zeros((), jnp.int32),
             "rng": k_rng}
    if sparse is not None and jax.tree.leaves(table):
      state["sparse"] = sparse.init(table)
    return state

  graphdef = setup.split(nnx.eval_shape(lambda: model(jax.random.PRNGKey(0))))[0]
  return graphdef, init


def with_values(params, values: dict):
  """`params` with the leaves named in `values` ("tapper/attention/z_center" -> array) replaced:
  a data-dependent init. A name that matches no leaf, or a shape that differs, is an error."""
  left = dict(values)

  def put(path, leaf):
    name = "/".join(param_path(path))
    if name not in left:
      return leaf
    value = jnp.asarray(left.pop(name), leaf.dtype)
    if value.shape != leaf.shape:
      raise ValueError(f"init value {name}: shape {value.shape}, the parameter's {leaf.shape}")
    return value

  out = jax.tree_util.tree_map_with_path(put, params)
  if left:
    raise KeyError(f"init values name no parameter: {sorted(left)}")
  return out


def loss_fn(graphdef, trainable, frozen, batch, key, remat: bool):
  model = nnx.merge(graphdef, trainable["table"], trainable["params"], frozen)
  return lm_loss(model, batch, dropout_key=key, remat=remat)


def micro_batches(batch: dict, widths: tuple[int, ...], shards: int) -> list[dict]:
  """The micro-batches of a batch whose rows `data.pipeline.MakeBatch` laid out [shard,
  micro-batch, row]: micro-batch m is every shard's m-th block of rows (so it stays spread
  over the shards, no rows move between devices), its token axis cut to `widths[m]`.
  Fields [B, ...] -> [B/M, ...]; the token-axis fields [B, T] -> [B/M, widths[m]]."""
  m = len(widths)

  def part(k, v, i):
    v = v.reshape(shards, m, -1, *v.shape[1:])[:, i].reshape(-1, *v.shape[1:])
    return v[:, :widths[i]] if k in TOKEN_AXIS else v
  return [{k: part(k, v, i) for k, v in batch.items()} for i in range(m)]


def grads_fn(graphdef, remat: bool = False, micro: tuple | None = None):
  """(trainable, frozen, batch, key) -> ((loss, tokens), grads over the trainable dict only).

  micro: (widths, shards) to run the batch as `micro_batches`, one after another: the loss is
  each micro-batch's mean weighted by its share of the target tokens, which is the whole
  batch's mean, and so are the gradients. Micro-batch m's dropout key is fold_in(key, m)."""
  grad = jax.value_and_grad(lambda t, f, b, k: loss_fn(graphdef, t, f, b, k, remat),
                            has_aux=True)
  if micro is None:
    return grad

  def accumulated(t, f, batch, key):
    outs = [grad(t, f, b, jax.random.fold_in(key, i))
            for i, b in enumerate(micro_batches(batch, *micro))]
    count = sum(c for (_, c), _ in outs)
    share = [c / jnp.maximum(count, 1.0) for (_, c), _ in outs]
    loss = sum(w * l for w, ((l, _), _) in zip(share, outs))
    grads = jax.tree.map(lambda *g: sum(w * x for w, x in zip(share, g)), *(g for _, g in outs))
    return (loss, count), grads
  return accumulated


def train_step_fn(graphdef, tx, lr_schedule, remat: bool = False,
                  sparse: SparseTableAdamW | None = None, user_dropout: float = 0.0,
                  micro: tuple | None = None):
  """The pure step (state, frozen, batch) -> (state, metrics). With `sparse` (and a table in
  the state) the model runs on the batch's rows of the table alone and the table takes a
  row-wise AdamW step (training/sparse_table.py). `user_dropout`: see `_core`; `micro`: see
  `grads_fn` (one optimizer update for the whole batch)."""
  core = _core(graphdef, tx, lr_schedule, remat, user_dropout, micro)

  def step(state, frozen, batch):
    rowwise = sparse is not None and "sparse" in state
    if not rowwise:
      new, metrics, _ = core(state, state["table"], frozen, batch)
      return new, metrics
    mini, uniq, rows = sparse.gather(state["table"], batch["user_row"])
    new, metrics, (table_grads, grad_norm) = core(state, mini, frozen, {**batch, "user_row": rows})
    # The table is guarded row-wise: a whole-table select would cost O(users).
    new["table"], new["sparse"] = sparse.update(
        state["table"], state["sparse"], jnp.where(metrics["finite"], uniq, -1),
        sparse.clipped(table_grads, grad_norm), state["step"])
    return new, metrics

  return step


def host_table_step_fn(graphdef, tx, lr_schedule, sparse: SparseTableAdamW, table_treedef,
                       remat: bool = False, user_dropout: float = 0.0,
                       micro: tuple | None = None):
  """The step of `table_memory = "host"` (training/host_table.py): (state without the table,
  frozen, batch, rows) -> (state, metrics, new rows). `rows` holds the batch's distinct table
  rows as the host gathered them ({"w", "m", "v"} [B,L,D], "last" [B]) and `batch["user_row"]`
  points into them; the new rows come back for the host to write."""
  core = _core(graphdef, tx, lr_schedule, remat, user_dropout, micro)

  def step(state, frozen, batch, rows):
    mini = jax.tree.unflatten(table_treedef, [rows["w"]])
    new, metrics, (table_grads, grad_norm) = core(state, mini, frozen, batch)
    del new["table"]  # the host holds the table
    (g,) = jax.tree.leaves(sparse.clipped(table_grads, grad_norm))
    w, m, v = sparse.step_rows(rows["w"], rows["m"], rows["v"], g, rows["last"], state["step"])
    out = jax.tree.map(lambda n, o: jnp.where(metrics["finite"], n.astype(o.dtype), o),
                       {"w": w, "m": m, "v": v}, {k: rows[k] for k in ("w", "m", "v")})
    return new, metrics, out

  return step


def _core(graphdef, tx, lr_schedule, remat: bool, user_dropout: float = 0.0,
          micro: tuple | None = None):
  """(state, table, frozen, batch) -> (state with params, opt, step updated; metrics;
  (the table's gradient, the global gradient norm)). The table passed is the state's or the
  batch's rows of it; what becomes of it is the caller's.

  user_dropout: each example's user row is dropped (-1: P_u = 0, a cold start) with this
  probability, so that P_q learns to carry the history alone, as a new user's prefix must."""
  grad = grads_fn(graphdef, remat, micro)

  def core(state, table, frozen, batch):
    key = jax.random.fold_in(state["rng"], state["step"])
    if user_dropout > 0 and "user_row" in batch:
      drop = jax.random.bernoulli(jax.random.fold_in(key, 1), user_dropout,
                                  batch["user_row"].shape)
      batch = {**batch, "user_row": jnp.where(drop, -1, batch["user_row"])}
    trainable = {"params": state["params"], "table": table}
    (loss, tokens), grads = grad(trainable, frozen, batch, key)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient leaves the state as it was (the host then stops the run):
    # no NaN ever reaches the parameters, the optimizer moments or a checkpoint.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt = tx.update(grads, state["opt"], trainable)
    new = {**optax.apply_updates(trainable, updates), "opt": opt}
    old = {**trainable, "opt": state["opt"]}
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": loss, "grad_norm": grad_norm, "target_tokens": tokens,
               "lr": lr_schedule(state["step"]), "finite": finite}
    return ({**state, **new, "step": state["step"] + finite.astype(jnp.int32)}, metrics,
            (grads["table"], grad_norm))

  return core
