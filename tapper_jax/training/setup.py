"""Config checks, the device mesh, model assembly and state created already sharded.

Everything here runs before any step is compiled, so a bad config fails in seconds with a
message naming the field.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tapper_jax import methods
from tapper_jax.data.tasks import get_task
from tapper_jax.errors import ConfigError  # re-exported: setup.ConfigError
from tapper_jax.models.llama import LlamaForCausalLM, remat_policy
from tapper_jax.models.lora import attach_lora
from tapper_jax.models.partitioning import fitted_spec, state_shardings
from tapper_jax.tapper.model import PersonalizedLM
from tapper_jax.tapper.prefix import PrefixTable

# Evaluation controls (config.eval_controls) -> the row name's suffix (training/loop.py).
CONTROLS = {"no_personal": "no personal input", "other_user": "another user's input",
            "cold": "own history, no user row"}

# What stage 2 trains besides the table: every LoRA factor and every Param of the TAP-PER module.
TRAINABLE = nnx.Any(nnx.LoRAParam, nnx.PathContains("tapper"))


def mesh_shape(config, num_devices: int) -> tuple[int, ...]:
  shape = tuple(int(s) for s in config.mesh.shape)
  axes = tuple(config.mesh.axes)
  if len(shape) != len(axes):
    raise ConfigError(f"config.mesh.shape {shape} and config.mesh.axes {axes} differ in length")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f"config.mesh.shape {shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"config.mesh.shape {shape} does not divide the {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"config.mesh.shape {shape} needs {math.prod(shape)} devices; "
                      f"{num_devices} are present")
  return shape


def validate(config, num_devices: int | None = None) -> tuple[int, ...]:
  """Checks the config; returns the resolved mesh shape. Raises ConfigError."""
  num_devices = num_devices or jax.device_count()
  try:
    get_task(config.task)
  except (KeyError, ValueError):
    raise ConfigError(f"config.task={config.task!r}: unknown LaMP task (LaMP_1, LaMP_2M, "
                      "LaMP_2N, LaMP_3, LaMP_4, LaMP_5, LaMP_7)") from None
  methods.get(config)  # raises ConfigError for an unknown method
  if str(config.stage) not in ("1", "2", "both"):
    raise ConfigError(f"config.stage={config.stage!r}: choose 1, 2 or both")
  if config.data.source not in ("lamp", "oppu", "synthetic"):
    raise ConfigError(f"config.data.source={config.data.source!r}: choose lamp, oppu or synthetic")
  kinds = tuple(config.stage2.examples)
  if not kinds or any(k not in ("records", "questions", "pooled") for k in kinds):
    raise ConfigError(f"config.stage2.examples={kinds!r}: one or more of records, questions, "
                      "pooled")
  if config.chat_template not in ("auto", "on", "off"):
    raise ConfigError(f"config.chat_template={config.chat_template!r}: auto, on or off")
  if config.stage2.prefix and not (config.stage2.user_prefix or config.stage2.query_prefix):
    raise ConfigError("config.stage2: prefix=True needs user_prefix or query_prefix "
                      "(for neither, set prefix=False: the bridge-LoRA-alone control)")
  if not config.stage2.prefix and not config.stage2.bridge_lora and config.method != "rag":
    raise ConfigError("config.stage2: prefix=False and bridge_lora=False leave nothing to train "
                      "(only method 'rag' evaluates so, zero-shot, on its own prompts)")
  for c in config.eval_controls:
    if c not in CONTROLS:
      raise ConfigError(f"config.eval_controls: unknown control {c!r} ({', '.join(CONTROLS)})")
  try:
    remat_policy(config.model.remat)  # the one list of the accepted values
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  if not (isinstance(config.model.scan_unroll, int) and config.model.scan_unroll >= 0):
    raise ConfigError(f"config.model.scan_unroll={config.model.scan_unroll!r}: layers per scan "
                      "iteration, an int >= 0 (0: unroll every layer)")
  if not 0 <= config.stage2.get("user_dropout", 0.0) < 1:
    raise ConfigError(f"config.stage2.user_dropout={config.stage2.user_dropout}: a probability "
                      "in [0, 1)")
  if config.stage2.get("table_memory", "device") not in ("device", "host"):
    raise ConfigError(f"config.stage2.table_memory={config.stage2.table_memory!r}: device or host")
  for field in ("train_bucket", "train_length_groups", "train_unpad"):
    v = config.get(field, 0)
    if not (isinstance(v, int) and v >= 0):
      raise ConfigError(f"config.{field}={v!r}: an int >= 0 (0: off)")
  micro = config.get("train_micro_batches", 1)
  if not (isinstance(micro, int) and micro >= 0):
    raise ConfigError(f"config.train_micro_batches={micro!r}: an int >= 0 (1: off, 0: auto)")
  if micro > 1 and config.get("train_unpad", 0):
    raise ConfigError("config.train_micro_batches > 1 with config.train_unpad: choose one (each "
                      "cuts the padding of short rows)")
  if config.stage2.max_history < 0:
    raise ConfigError(f"config.stage2.max_history={config.stage2.max_history}: >= 0 (0 = all)")
  for field in ("stage2.prefix_len", "stage2.attention_chunk", "stage2.record_tokens",
                "stage1.lora_rank", "stage2.bridge_rank", "max_prompt_tokens", "max_target_tokens",
                "max_new_tokens", "eval_batch_size", "checkpoint_every", "log_every"):
    v = config
    for part in field.split("."):
      v = v[part]
    if int(v) <= 0:
      raise ConfigError(f"config.{field}={v}: must be positive")
  shape = mesh_shape(config, num_devices)
  batch_shards = math.prod(s for s, a in zip(shape, config.mesh.axes) if a in ("data", "fsdp"))
  active = {"1": ("stage1",), "2": ("stage2",), "both": ("stage1", "stage2")}[str(config.stage)]
  for stage in active:
    s = config[stage]
    if (s.steps < 0 or s.epochs < 0 or (s.steps == 0 and s.epochs == 0) or s.learning_rate <= 0
        or not 0 <= s.warmup < 1 or s.grad_clip <= 0 or s.weight_decay < 0):
      raise ConfigError(f"config.{stage}: steps >= 0 or epochs > 0, 0 <= warmup < 1 (a "
                        "fraction), learning_rate and grad_clip > 0, weight_decay >= 0")
    if s.batch_size <= 0 or s.batch_size % batch_shards:
      raise ConfigError(f"config.{stage}.batch_size={s.batch_size} must be a positive multiple "
                        f"of the {batch_shards} data*fsdp devices of mesh {shape}")
    if micro > 1 and s.batch_size % (batch_shards * micro):
      raise ConfigError(f"config.{stage}.batch_size={s.batch_size}: config.train_micro_batches="
                        f"{micro} micro-batches x {batch_shards} data*fsdp devices must divide it")
  if config.eval_batch_size % batch_shards:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                      f"the {batch_shards} data*fsdp devices")
  return shape


def make_mesh(config) -> Mesh:
  shape = mesh_shape(config, jax.device_count())
  return jax.make_mesh(shape, tuple(config.mesh.axes),
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def table_rows(num_users: int, mesh: Mesh, config) -> int:
  """Table rows: the users, padded so the `users` axis divides its mesh axes evenly."""
  spec = fitted_spec((1 << 30,), ("users",), config.mesh.rules, mesh)
  shards = 1
  for entry in spec:
    for a in ((entry,) if isinstance(entry, str) else tuple(entry or ())):
      shards *= mesh.shape[a]
  return max(1, -(-num_users // shards) * shards)


def build_model(llm: LlamaForCausalLM, config, stage: int, num_rows: int, key) -> PersonalizedLM:
  """Attaches the stage's LoRA (task r8 / bridge r4, unless switched off) to `llm`, and in
  stage 2 the method's prefix module (TAP-PER's; none for the bridge-LoRA-alone control)."""
  k_lora, k_tapper = jax.random.split(key)
  s = config.stage1 if stage == 1 else config.stage2
  if stage == 1:
    attach_lora(llm, rank=s.lora_rank, alpha=s.lora_alpha, dropout=s.lora_dropout, key=k_lora)
  elif s.bridge_lora:
    attach_lora(llm, rank=s.bridge_rank, alpha=s.bridge_alpha, dropout=s.bridge_dropout,
                targets=tuple(s.bridge_targets), key=k_lora)
  prefix = None
  if stage == 2:
    prefix = methods.get(config).prefix_module(llm.config.hidden_size, num_rows,
                                               nnx.Rngs(k_tapper))
  return PersonalizedLM(llm, prefix)


def split(model: PersonalizedLM):
  """graphdef, table, trainable (LoRA + TAP-PER module), frozen (the backbone)."""
  return nnx.split(model, PrefixTable, TRAINABLE, ...)


def batch_sharding(mesh: Mesh, config, ndim: int) -> NamedSharding:
  spec = fitted_spec((1 << 30,) + (1,) * (ndim - 1), ("batch",) + (None,) * (ndim - 1),
                     config.mesh.rules, mesh)
  return NamedSharding(mesh, spec)


def process_rows(mesh: Mesh, config, batch_size: int) -> tuple[int, int]:
  """[start, stop): the rows of a global batch that this process's devices hold (all of them in
  a one-process run). Each process loads and tokenizes only these."""
  idx = batch_sharding(mesh, config, 1).addressable_devices_indices_map((batch_size,))
  spans = {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in idx.values()}
  lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != hi - lo:
    raise ValueError(f"process {jax.process_index()}: its devices hold rows {sorted(spans)} of "
                     "the batch, not one contiguous block; order the mesh's devices by process")
  return lo, hi


def batch_shards(mesh: Mesh, config) -> int:
  """How many blocks the batch axis is cut into over the mesh (its data-parallel degree)."""
  entry = batch_sharding(mesh, config, 1).spec[0]
  return math.prod(mesh.shape[a] for a in ((entry,) if isinstance(entry, str) else entry or ()))


def micro_batches(config, batch_size: int, shards: int) -> int:
  """How many micro-batches a training batch runs as (config.train_micro_batches; 0: auto,
  which is 2 on a CPU backend unless the batch is unpadded or 2 x `shards` does not divide
  `batch_size`, else 1)."""
  micro = config.get("train_micro_batches", 1)
  if micro:
    return micro
  fits = batch_size % (2 * shards) == 0 and not config.get("train_unpad", 0)
  return 2 if fits and jax.default_backend() == "cpu" else 1


def put_batch(batch: dict, mesh: Mesh, config, global_rows: int | None = None) -> dict:
  """Places a batch by its sharding. `batch` holds the whole global batch, or, with
  `global_rows`, only this process's rows of it (`process_rows`): each process then transfers
  only the slices its own devices hold. Every field's leading axis is this process's share of
  the global one (rows of examples; `unpad`'s groups of rows)."""
  share = 1 if global_rows is None else global_rows // len(batch["input_ids"])

  def put(v):
    v = np.asarray(v)
    shape = (v.shape[0] * share,) + v.shape[1:]
    return jax.make_array_from_process_local_data(batch_sharding(mesh, config, v.ndim), v, shape)
  return {k: put(v) for k, v in batch.items()}


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shardings(abstract, mesh: Mesh, config):
  return state_shardings(abstract, mesh, config.mesh.rules)
