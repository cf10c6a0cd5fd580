"""grain input pipeline: tokenize, pad and batch LaMP examples; checkpointable iterator state.

Examples are dicts with "input" and "target" strings and optionally "keep" (characters of the
input never shortened: the instruction and label list; see `data.prompts`). A TFDS data source
from `tfds_lamp` or any random-access sequence works. Each becomes (T = P + K tokens, P the
prompt budget, K the target budget):
  input_ids  [T] int32  prompt + target + EOS, right-padded
  loss_mask  [T] int32  1 on the target and EOS tokens only
  attention_mask [T] int32
  target_pos [K] int32, target_valid [K] int32: the positions in input_ids that carry loss
  shortened, target_cut []  int32: the input was shortened / the target lost its end (counted)
  index      []  int32  the example's position in the source (to find its user and history)
Batches may trim T to their longest row (`bucket`), after grouping rows of similar length
(`group`); in a multi-process run each process loads only its rows of each global batch.
With `unpad`, a batch also carries `unpad` [U, N] int8 zeros whose shape tells the model to run
its per-token layers on N slots for each group of B/U rows (`models.llama.unpad_index`).
With `micro` = M > 1, a batch's rows are sorted by length and cut into M micro-batches, laid
out [shard, micro-batch, row] so each micro-batch is spread over every shard; `micro` [M] int32
(host only) holds each one's width, its longest row rounded up to `bucket`
(`training.steps.micro_batches` cuts them apart).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from tapper_jax.data.prompts import PromptFormat


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclasses.dataclass
class Tokenize(grain.transforms.Map):
  prompts: PromptFormat
  max_target_tokens: int

  def map(self, element):
    index, ex = element
    p, k = self.prompts.max_prompt_tokens, self.max_target_tokens
    prompt, shortened = self.prompts.encode(_text(ex["input"]), int(ex.get("keep", 0)))
    target, cut = self.prompts.encode_target(_text(ex["target"]), k)
    ids = prompt + target
    pad = self.prompts.tokenizer.pad_id
    out = np.full((p + k,), 0 if pad is None else pad, np.int32)
    out[: len(ids)] = ids
    loss = np.zeros((p + k,), np.int32)
    loss[len(prompt): len(ids)] = 1
    mask = np.zeros((p + k,), np.int32)
    mask[: len(ids)] = 1
    tp = np.zeros((k,), np.int32)
    tp[: len(target)] = np.arange(len(prompt), len(ids))
    tv = (np.arange(k) < len(target)).astype(np.int32)
    return {"input_ids": out, "loss_mask": loss, "attention_mask": mask, "target_pos": tp,
            "target_valid": tv, "shortened": np.int32(shortened), "target_cut": np.int32(cut),
            "index": np.int32(index)}


def token_lengths(source: Sequence, prompts: PromptFormat, max_target_tokens: int) -> np.ndarray:
  """[N]: the tokens each example fills (prompt + target + EOS), as `Tokenize` lays it out."""
  return np.asarray([len(prompts.encode(_text(ex["input"]), int(ex.get("keep", 0)))[0])
                     + len(prompts.encode_target(_text(ex["target"]), max_target_tokens)[0])
                     for ex in source], np.int32)


@dataclasses.dataclass
class IndexBatches:
  """Random access: global batch b -> the source indices of its B rows.

  `stream` is the (shuffled, repeated) example order; batch b is its elements b*B .. b*B+B-1.
  With `group` > 1, each window of `group` batches is sorted by token length before it is cut
  into batches, and the window's batches are served in a seeded random order: rows of a batch
  then have similar lengths, so trimming the batch to its longest row removes most padding.
  """
  stream: Any  # random-access example order (a grain MapDataset of indices)
  batch_size: int
  group: int = 0
  lengths: np.ndarray | None = None  # [N] token lengths (needed when group > 1)
  seed: int = 0

  def __post_init__(self):
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self):
    return len(self.stream) // self.batch_size

  def __getitem__(self, b: int) -> np.ndarray:
    b = int(b)
    bsz = self.batch_size
    if self.group <= 1:
      return np.asarray([self.stream[b * bsz + i] for i in range(bsz)], np.int64)
    w, j = divmod(b, self.group)
    if w not in self._cache:
      start = w * self.group * bsz
      n = min(self.group * bsz, (len(self.stream) - start) // bsz * bsz)
      ids = np.asarray([self.stream[start + i] for i in range(n)], np.int64)
      ids = ids[np.argsort(self.lengths[ids], kind="stable")].reshape(-1, bsz)
      self._cache = {w: ids[np.random.default_rng([self.seed, w]).permutation(len(ids))]}
    return self._cache[w][j]


@dataclasses.dataclass
class MakeBatch(grain.transforms.Map):
  """Source indices of one global batch -> this process's rows, tokenized and stacked, the
  token axis trimmed to the batch's longest row rounded up to a multiple of `bucket` (0: the
  full budget). Trimming is exact: what it removes is right padding, with no loss and no
  attention. The trimmed length comes from the whole global batch's `lengths`, so every
  process of a multi-process run cuts the same shape."""
  source: Sequence
  tokenize: Tokenize
  maps: Sequence = ()
  rows: tuple[int, int] | None = None  # this process's [start, stop) rows of the global batch
  bucket: int = 0
  lengths: np.ndarray | None = None  # [N] token lengths (needed with bucket/unpad and rows)
  unpad: int = 0  # round each group's real slots up to a multiple of this (0: no `unpad`)
  shards: int = 1  # the blocks the global batch's rows are cut into (data parallelism)
  micro: int = 1  # M: micro-batches of rows sorted by length (1: the batch as drawn)

  def map(self, ids):
    full = self.tokenize.prompts.max_prompt_tokens + self.tokenize.max_target_tokens
    widths = None
    if self.micro > 1:
      ids, widths = self._micro_order(np.asarray(ids), full)
    mine = ids if self.rows is None else ids[self.rows[0]:self.rows[1]]
    rows = []
    for i in mine:
      ex = self.tokenize.map((int(i), self.source[int(i)]))
      for m in self.maps:
        ex = m.map(ex) if hasattr(m, "map") else m(ex)
      rows.append(ex)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # The whole global batch's row lengths: precomputed where other rows are elsewhere.
    lengths = (self.lengths[ids] if self.lengths is not None
               else batch["attention_mask"].sum(1))
    keep = self._width(int(lengths.max()), full)
    if keep < full:
      if batch["attention_mask"][:, keep:].any():
        raise ValueError(f"example {int(mine[0])}..: longer than its precomputed length")
      for k in TOKEN_AXIS:
        batch[k] = batch[k][:, :keep]
    if self.unpad:
      batch["unpad"] = self._unpad(lengths, keep, len(mine))
    if widths is not None:
      batch["micro"] = np.asarray(widths, np.int32)
    return batch

  def _micro_order(self, ids: np.ndarray, full: int) -> tuple[np.ndarray, list[int]]:
    """The global batch's rows sorted by length, cut into `micro` runs of consecutive rows,
    laid out [shard, micro-batch, row]; and each micro-batch's width: its longest row rounded
    up to `bucket` (0: the full budget)."""
    m, s, total = self.micro, self.shards, len(ids)
    if self.lengths is None:
      raise ValueError("micro-batches need every example's precomputed length")
    if total % (m * s):
      raise ValueError(f"micro-batches: {m} micro-batches x {s} shards do not cut the batch of "
                       f"{total} rows evenly")
    ids = ids[np.argsort(self.lengths[ids], kind="stable")].reshape(m, s, total // (m * s))
    widths = [self._width(int(n), full) for n in self.lengths[ids].max(axis=(1, 2))]
    return ids.transpose(1, 0, 2).reshape(-1), widths

  def _width(self, longest: int, full: int) -> int:
    """The token axis kept for rows whose longest has `longest` tokens: rounded up to `bucket`,
    at most `full` (no bucket: `full`)."""
    return min(full, -(-longest // self.bucket) * self.bucket) if self.bucket else full

  def _unpad(self, lengths: np.ndarray, width: int, local_rows: int) -> np.ndarray:
    """[U_local, N] zeros: N the most real tokens of any group of the global batch (row
    `lengths`), rounded up to `unpad` (at most the group's padded slots). The model adds its
    soft-prefix slots."""
    g, total = self.shards, len(lengths)
    if total % g or local_rows % (total // g):
      raise ValueError(f"unpad: {g} groups do not cut the batch of {total} rows (this "
                       f"process: {local_rows}) evenly")
    per = total // g
    most = int(np.asarray(lengths).reshape(g, per).sum(1).max())
    n = min(-(-most // self.unpad) * self.unpad, per * width)
    return np.zeros((local_rows // per, n), np.int8)


TOKEN_AXIS = ("input_ids", "loss_mask", "attention_mask")  # the fields trimmed to a bucket


def make_dataset(source: Sequence, prompts: PromptFormat, *, max_target_tokens: int,
                 batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, drop_remainder: bool = True,
                 maps: Sequence = (), bucket: int = 0, group: int = 0,
                 rows: tuple[int, int] | None = None, unpad: int = 0,
                 shards: int = 1, micro: int = 1, prefetch: int = 8) -> grain.IterDataset:
  """A grain IterDataset of batches; `iter()` it, and use get_state()/set_state() to resume.

  `maps`: further per-example transforms run after tokenizing (e.g. the trainer's history
  lookup), each given and returning the example dict. `bucket`/`group`: trim each batch's
  token axis to a multiple of `bucket`, sorting windows of `group` batches by length first
  (`IndexBatches`, `MakeBatch`). `rows`: the rows of each global batch this process loads
  (multi-process: each process tokenizes only its own rows; `None`: all). `unpad`,
  `shards`: the `unpad` field's groups (`MakeBatch`; no group may span two processes' rows)
  and the blocks each of `micro` micro-batches is spread over (`MakeBatch`). `prefetch`:
  batches made ahead by background threads (grain's own default, 500 by 16 threads, held
  6.5 GB of whole-history batches on huffpost_4 at batch 8, and competed with the step).
  """
  stream = grain.MapDataset.range(len(source))
  if shuffle:
    stream = stream.shuffle(seed=seed)
  stream = stream.repeat(num_epochs)
  if not drop_remainder and len(stream) % batch_size:
    raise ValueError("make_dataset: drop_remainder=False is not supported; pad the source")
  if rows is not None and tuple(rows) == (0, batch_size):
    rows = None  # one process holds every row
  # Every example's length, tokenized once up front: only where a batch's rows are not all at
  # hand (grouping sorts a window; a process's trim must match the others'; micro-batches
  # sort the batch before its rows are loaded).
  lengths = (token_lengths(source, prompts, max_target_tokens)
             if group > 1 or micro > 1 or ((bucket or unpad) and rows is not None) else None)
  batches = IndexBatches(stream, batch_size, group, lengths, seed)
  ds = grain.MapDataset.source(batches).map(
      MakeBatch(source, Tokenize(prompts, max_target_tokens), tuple(maps), rows, bucket, lengths,
                unpad, shards, micro))
  if prefetch < 1:
    raise ValueError(f"make_dataset: prefetch={prefetch} must be at least 1")
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=min(2, prefetch),
                                              prefetch_buffer_size=prefetch))
