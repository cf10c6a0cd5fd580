"""LaMP questions -> training and evaluation examples, the record bank, and batches.

This is where LaMP meets TAP-PER: `data/` reads files, `tapper/` sees only texts, days and user
ids. A question's time is its own date; LaMP questions carry none, so theirs is taken as one day
after the newest record of their profile (the whole profile is older, as LaMP intends).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import grain
import numpy as np

from tapper_jax.data import lamp, synthetic
from tapper_jax.data.pipeline import make_dataset
from tapper_jax.data.tasks import TaskSpec
from tapper_jax.tapper.bank import RecordBank, embed_texts


@dataclasses.dataclass
class Example:
  id: str
  user: str
  input: str  # the LaMP prompt
  target: str
  query: str  # the text embedded as z_q
  day: float  # the question's time (days)


def question_day(q: lamp.Question) -> float:
  if q.date_day is not None:
    return q.date_day
  return q.profile[-1].day + 1.0 if q.profile else 0.0


def load_task(config, workdir: str) -> tuple[TaskSpec, str]:
  """The task spec and its data folder (writing the synthetic task first if asked to)."""
  source = config.data.source
  folder = config.data.folder
  if source == "synthetic":
    folder = folder or os.path.join(workdir, "data", "synthetic_drift")
    if not os.path.isfile(os.path.join(folder, "meta.json")):
      synthetic.generate(folder, **config.data.synthetic.to_dict())
  elif not folder or not os.path.isdir(folder):
    raise FileNotFoundError(f"config.data.folder={folder!r}: not a folder of LaMP files")
  spec = lamp.task_of_folder(folder, config.task)
  return spec, folder


def load_questions(config, spec: TaskSpec, folder: str, split: str):
  """(questions, report) of one split, in file order."""
  if config.data.source == "oppu":
    return lamp.load_oppu(folder, spec.name, which=split, strict=config.data.strict)
  return lamp.load_split(folder, spec, split, strict=config.data.strict)


def question_examples(spec: TaskSpec, questions: Sequence[lamp.Question]) -> list[Example]:
  return [Example(q.id, q.user_id, q.input, q.gold or "", spec.query(q.input), question_day(q))
          for q in questions]


def record_examples(spec: TaskSpec, questions: Sequence[lamp.Question]) -> list[Example]:
  """Every profile record that makes a prompt, once per (user, record id), as its own example."""
  out, seen = [], set()
  for q in questions:
    for r in q.profile:
      if (q.user_id, r.id) in seen:
        continue
      seen.add((q.user_id, r.id))
      ex = spec.record_example(r.fields)
      if ex is not None:
        out.append(Example(f"{q.user_id}/{r.id}", q.user_id, ex[0], ex[1], spec.query(ex[0]),
                           r.day))
  return out


def build_bank(spec: TaskSpec, question_sets: Sequence[Sequence[lamp.Question]], tokenizer,
               embedding: np.ndarray, record_tokens: int) -> RecordBank:
  """All users' records (union over the given question sets' profiles), embedded once."""
  users: dict[str, list] = {}
  for qs in question_sets:
    for q in qs:
      users.setdefault(q.user_id, []).extend(
          (r.id, spec.record_text(r.fields), r.day) for r in q.profile)
  return RecordBank.build(users, tokenizer, embedding, max_tokens=record_tokens)


@dataclasses.dataclass
class TargetSlots(grain.transforms.Map):
  """loss_mask [T] -> target_pos [K], target_valid [K] (the first K loss positions)."""
  max_target_tokens: int

  def map(self, ex):
    pos = np.flatnonzero(ex["loss_mask"])[: self.max_target_tokens]
    k = self.max_target_tokens
    tp = np.zeros((k,), np.int32)
    tv = np.zeros((k,), np.int32)
    tp[: len(pos)] = pos
    tv[: len(pos)] = 1
    return {**ex, "target_pos": tp, "target_valid": tv}


@dataclasses.dataclass
class HistoryFields(grain.transforms.Map):
  """Adds user_row, query_z [D] and the padded history (hist_z, hist_age, hist_valid)."""
  examples: Sequence[Example]
  bank: RecordBank
  query_z: np.ndarray  # [N, D], row i = examples[i]
  id_map: dict
  max_history: int

  def map(self, ex):
    i = int(ex["index"])
    e = self.examples[i]
    rows = self.bank.history(e.user, e.day, self.max_history)
    h = self.bank.gather([rows], [e.day], self.max_history)
    return {**ex, "user_row": np.int32(self.id_map.get(e.user, -1)), "query_z": self.query_z[i],
            **{k: v[0] for k, v in h.items()}}


def embed_queries(examples: Sequence[Example], tokenizer, embedding, record_tokens: int):
  return embed_texts([e.query for e in examples], tokenizer, embedding, max_tokens=record_tokens)


def train_dataset(examples: Sequence[Example], tokenizer, config, stage_cfg, *, seed: int,
                  history: HistoryFields | None = None):
  source = [{"input": e.input, "target": e.target} for e in examples]
  maps = [TargetSlots(config.max_target_tokens)] + ([history] if history is not None else [])
  return make_dataset(source, tokenizer, batch_size=stage_cfg.batch_size, max_len=config.max_len,
                      seed=seed, shuffle=True, num_epochs=None, maps=maps)
