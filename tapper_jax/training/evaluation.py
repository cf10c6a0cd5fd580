"""Greedy predictions for LaMP questions (with or without the TAP-PER prefix), their scores, and
the gold answers' NLL teacher-forced (`gold_nll`).

Prompts are left-padded to one fixed length (or, with `eval_buckets`, to a few power-of-two
lengths) so generation compiles once per shape. With a prefix the
sequence is [prefix, padding, prompt]: padding is masked and rotary positions count real slots
only, so the prompt sees exactly the positions it had in training ([prefix, prompt, target]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax import metrics
from tapper_jax.data.prompts import PromptFormat
from tapper_jax.models.generate import beam_search, greedy_generate
from tapper_jax.models.tokenizer import bucket_length
from tapper_jax.tapper.model import PersonalizedLM, target_nll


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _inputs(graphdef, state, batch):
  model: PersonalizedLM = nnx.merge(graphdef, state)
  return model.inputs(batch)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _row_nll(graphdef, state, batch):
  nll, w = target_nll(nnx.merge(graphdef, state), batch)
  return jnp.sum(nll * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)  # [B]


def _padded(chunk: list[int], size: int) -> list[int]:
  """The batch's example indices, the last batch filled with its last row: one compiled shape."""
  return chunk + [chunk[-1]] * (size - len(chunk))


def _personal(fields, rows: list[int]) -> dict:
  """The rows' personal batch fields stacked ({} without fields: no prefix)."""
  if fields is None:
    return {}
  f = [fields(i) for i in rows]
  return {k: np.stack([x[k] for x in f]) for k in f[0]}


def wants_nll(config, examples) -> bool:
  """Whether a row's gold NLL is scored: asked for (`eval_nll`) and every question has a gold."""
  return bool(config.get("eval_nll", False)) and all(e.target for e in examples)


def nll_path(predictions_path: str) -> str:
  """Where `gold_nll`'s per-question values of a row sit: beside its leaderboard file."""
  return predictions_path.rsplit(".", 1)[0] + ".nll.json"


def gold_nll(model: PersonalizedLM, examples, prompts: PromptFormat, config,
             fields=None) -> np.ndarray:
  """[N]: each example's gold target (EOS included) scored teacher-forced: the mean NLL per
  target token, laid out as in training ([prefix, prompt, target], the same budgets).

  Far more sensitive than the generated answer's score: a personal input that moves the
  model's belief about the gold shows here even where greedy decoding writes the same words.
  fields: as in `predict`. Every row of a batch carries its own prefix inputs. Across
  processes, each scores its share (`_round_robin`) on the model gathered whole (`host_local`),
  and every process gets every value, in order.
  """
  if jax.process_count() == 1:
    return _gold_nll_here(model, examples, prompts, config, fields)
  mine = _round_robin(len(examples))
  local = _gold_nll_here(host_local(model), [examples[i] for i in mine], prompts, config,
                         None if fields is None else (lambda j: fields(mine[j])))
  return _gather_round_robin(local, len(examples)).astype(np.float64)  # gathered as f32


def _gold_nll_here(model, examples, prompts, config, fields) -> np.ndarray:
  """`gold_nll` on this process's devices alone."""
  from tapper_jax.data.pipeline import Tokenize
  tok = Tokenize(prompts, config.max_target_tokens)
  bsz = config.eval_batch_size
  graphdef, state = nnx.split(model)
  out = np.zeros((len(examples),), np.float64)
  for start in range(0, len(examples), bsz):
    chunk = list(range(start, min(start + bsz, len(examples))))
    rows = _padded(chunk, bsz)
    enc = [tok.map((i, {"input": examples[i].input, "target": examples[i].target,
                        "keep": examples[i].keep})) for i in rows]
    batch = {k: np.stack([e[k] for e in enc]) for k in ("input_ids", "attention_mask",
                                                        "target_pos", "target_valid")}
    batch.update(_personal(fields, rows))
    nll = np.asarray(_row_nll(graphdef, state, jax.tree.map(jnp.asarray, batch)))
    out[chunk] = nll[:len(chunk)]
  return out


def clean(text: str) -> str:
  """The answer: generation up to the first line break, stripped."""
  return text.strip().split("\n")[0].strip()


def predict(model: PersonalizedLM, examples, prompts: PromptFormat, config,
            fields=None) -> list[str]:
  """Answers for `examples` (training.examples.Example), in order: greedy, or beam search with
  `config.num_beams` > 1.

  fields: i -> example i's personal batch fields (the method's, e.g. `HistoryFields.fields`:
  user_row, query_z, hist_*); None runs without a prefix. Prompts get the training budget.
  With `config.eval_buckets` the questions run sorted by prompt length, each batch left-padded
  to the next power of two (at most the budget): few compiled shapes, little padding. Users mix
  freely within a batch: every row carries its own prefix inputs.
  """
  bsz, plen = config.eval_batch_size, prompts.max_prompt_tokens
  graphdef, state = nnx.split(model)
  encoded = [prompts.encode(e.input, e.keep)[0] for e in examples]
  order = list(range(len(examples)))
  if config.get("eval_buckets", False):
    order.sort(key=lambda i: len(encoded[i]))
  out: list[str] = [""] * len(examples)
  from tapper_jax.training.logger import progress
  for start in progress(range(0, len(examples), bsz), desc="evaluate", unit="batch",
                        enabled=bool(config.get("progress", False))):
    chunk = order[start:start + bsz]
    rows = _padded(chunk, bsz)
    length = plen
    if config.get("eval_buckets", False):
      length = bucket_length(max(len(encoded[i]) for i in chunk), smallest=32, largest=plen)
    ids, mask = prompts.tokenizer.pad([encoded[i] for i in rows], side="left", length=length)
    batch = {"input_ids": ids, "attention_mask": mask}
    batch.update(_personal(fields, rows))
    emb, full_mask = _inputs(graphdef, state, jax.tree.map(jnp.asarray, batch))
    beams = int(config.get("num_beams", 1))
    if beams > 1:
      gen = beam_search(model.llm, inputs_embeds=emb, attention_mask=full_mask, num_beams=beams,
                        max_new_tokens=config.max_new_tokens, pad_id=prompts.tokenizer.pad_id)
    else:
      gen = np.asarray(greedy_generate(model.llm, inputs_embeds=emb, attention_mask=full_mask,
                                       max_new_tokens=config.max_new_tokens,
                                       pad_id=prompts.tokenizer.pad_id))
    for i, g in zip(chunk, gen):
      out[i] = clean(prompts.tokenizer.decode(g))
  return out


def host_local(model):
  """`model` with every array whole on this process's default device: a model trained across
  processes (its arrays span devices this process cannot address) gathered for local use.
  A collective: every process calls it. One process: `model` itself."""
  if jax.process_count() == 1:
    return model
  from jax.experimental import multihost_utils
  graphdef, state = nnx.split(model)

  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x
  return nnx.merge(graphdef, jax.tree.map(local, state))


def _round_robin(n: int) -> list[int]:
  """This process's share of n items: p, p + P, p + 2P, ... (P processes, p this one)."""
  return list(range(jax.process_index(), n, jax.process_count()))


def _gather_round_robin(local: np.ndarray, n: int) -> np.ndarray:
  """[n, ...]: every process's `_round_robin` rows (local: [its share, ...]) in item order."""
  from jax.experimental import multihost_utils
  procs = jax.process_count()
  buf = np.zeros((-(-n // procs),) + local.shape[1:], local.dtype)  # one shape everywhere
  buf[:len(local)] = local
  everyone = np.asarray(multihost_utils.process_allgather(buf))  # [P, ceil(n / P), ...]
  return np.stack([everyone[i % procs, i // procs] for i in range(n)]) if n else buf[:0]


def predict_everywhere(model, examples, prompts: PromptFormat, config, fields=None) -> list[str]:
  """`predict` over all processes: each answers its share (`_round_robin`) on its own devices
  (the model gathered whole: it fits one device), and every process gets every answer, in
  order. One process: `predict`."""
  if jax.process_count() == 1:
    return predict(model, examples, prompts, config, fields)
  from jax.experimental import multihost_utils
  mine = _round_robin(len(examples))
  answers = predict(host_local(model), [examples[i] for i in mine], prompts, config,
                    None if fields is None else (lambda j: fields(mine[j])))
  raw = [a.encode("utf-8") for a in answers]
  width = int(np.max(multihost_utils.process_allgather(
      np.asarray(max((len(r) for r in raw), default=0), np.int32))))
  buf = np.zeros((len(raw), max(width, 1)), np.uint8)  # UTF-8 bytes, zero-padded
  for j, r in enumerate(raw):
    buf[j, :len(r)] = np.frombuffer(r, np.uint8)
  lens = np.asarray([len(r) for r in raw], np.int32)
  text = _gather_round_robin(buf, len(examples))
  size = _gather_round_robin(lens, len(examples))
  return [bytes(t[:k]).decode("utf-8") for t, k in zip(text, size)]


def score(spec, examples, preds) -> dict[str, float]:
  return metrics.score(spec.name, preds, [e.target for e in examples],
                       labels=spec.labels or None)
