"""LaMP questions -> training and evaluation examples, the record bank, and batches.

This is where LaMP meets the methods: `data/` reads files, `tapper/` sees only texts, days and
user ids. Every example carries its own visible history: the ids of its user's records that
came before it, oldest first.
- A question's history is its own profile (LaMP gives each question the records it may see).
  Its time is `Question.day`: its own date, else its newest profile record's.
- A record-derived example (stage 2 trains on the evaluated users' own records) has the records
  before it in its user's date-sorted profile as history, and the record's date as its time.

Which users and records stage 2 trains on is decided here, once: the evaluated users' own
profile records, each user's taken from the profile of that user's *earliest* evaluated question,
so that no evaluated question (whose gold sits in a later question's profile) is ever trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Sequence

import grain
import numpy as np

from tapper_jax.training import distributed
from tapper_jax.data import lamp, synthetic
from tapper_jax.data.pipeline import make_dataset
from tapper_jax.data.prompts import PromptFormat
from tapper_jax.data.tasks import TaskSpec
from tapper_jax.tapper.bank import RecordBank


@dataclasses.dataclass
class Example:
  id: str
  user: str
  input: str  # the LaMP prompt
  target: str
  query: str  # the text embedded as z_q
  day: float  # the example's time (days)
  history: tuple[str, ...] = ()  # the user's record ids visible to it, oldest first
  keep: int = 0  # input characters never shortened (instruction, labels)


def load_task(config, workdir: str) -> tuple[TaskSpec, str]:
  """The task spec and its data folder (writing the synthetic task first if asked to)."""
  source = config.data.source
  folder = config.data.folder
  if source == "synthetic":
    folder = folder or os.path.join(workdir, "data", "synthetic_drift")
    with distributed.main_first("synthetic data"):
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
  out = []
  for q in questions:
    day = q.day if q.day is not None else 0.0
    out.append(Example(q.id, q.user_id, q.input, q.gold or "", spec.query(q.input), day,
                       tuple(r.id for r in q.profile), spec.keep(q.input)))
  return out


def earliest_profiles(questions: Sequence[lamp.Question]) -> dict[str, list[lamp.Record]]:
  """user -> the profile of that user's earliest question (by date, else the smallest profile)."""
  best: dict[str, lamp.Question] = {}
  for q in questions:
    b = best.get(q.user_id)
    key = (q.day if q.day is not None else float("inf"), len(q.profile))
    if b is None or key < (b.day if b.day is not None else float("inf"), len(b.profile)):
      best[q.user_id] = q
  return {u: q.profile for u, q in best.items()}


def record_examples(spec: TaskSpec, questions: Sequence[lamp.Question],
                    report: lamp.Report | None = None) -> list[Example]:
  """Each user's records (from `earliest_profiles`) that make a prompt, each an example whose
  history is the user's records before it. Records that make none are counted in `report`."""
  out = []
  for user, profile in earliest_profiles(questions).items():
    for i, r in enumerate(profile):
      ex = spec.record_example(r.fields)
      if ex is None:
        if report is not None:
          report.skip("record_without_example", f"user {user} record {r.id}")
        continue
      out.append(Example(f"{user}/{r.id}", user, ex[0], ex[1], spec.query(ex[0]), r.day,
                         tuple(p.id for p in profile[:i]), spec.keep(ex[0])))
  return out


def stage2_examples(spec: TaskSpec, kinds: Sequence[str], eval_qs: Sequence[lamp.Question],
                    stage1_qs: Sequence[lamp.Question], report: lamp.Report) -> list[Example]:
  """Stage-2 training examples. kinds: "records" (the evaluated users' own profile records),
  "questions" (the stage-1 split's questions of the evaluated users, where the setting has
  them), "pooled" (every stage-1 question: the non-personalized control trained as long)."""
  evaluated = {q.user_id for q in eval_qs}
  out: list[Example] = []
  for kind in kinds:
    if kind == "records":
      out += record_examples(spec, eval_qs, report)
    elif kind == "questions":
      out += question_examples(spec, [q for q in stage1_qs if q.user_id in evaluated])
    elif kind == "pooled":
      out += question_examples(spec, stage1_qs)
    else:
      raise ValueError(f"unknown stage-2 example kind {kind!r}")
  return out


def held_out_users(eval_qs: Sequence[lamp.Question], n: int) -> set[str]:
  """The last `n` evaluated users by sorted id: left out of stage-2 training when
  `stage2.holdout_users` = n (they are cold at evaluation; an online update fits them later)."""
  return set(sorted({q.user_id for q in eval_qs})[-n:]) if n > 0 else set()


def build_bank(spec: TaskSpec, question_sets: Sequence[Sequence[lamp.Question]],
               embed) -> RecordBank:
  """All users' records (union over the given question sets' profiles), embedded once by
  `embed` (texts -> [N, D])."""
  users: dict[str, list] = collections.defaultdict(list)
  for qs in question_sets:
    for q in qs:
      users[q.user_id].extend((r.id, spec.record_text(r.fields), r.day) for r in q.profile)
  return RecordBank.build(users, embed)


def history_slots(example_sets: Sequence[Sequence[Example]], max_history: int, chunk: int) -> int:
  """H for the whole run (one compiled shape): the longest history attended, rounded up to the
  attention chunk (to a multiple of 8 when shorter than one chunk)."""
  n = max((len(e.history) for es in example_sets for e in es), default=1)
  n = max(1, min(n, max_history) if max_history > 0 else n)
  unit = chunk if n > chunk else 8
  return -(-n // unit) * unit


@dataclasses.dataclass
class HistoryFields(grain.transforms.Map):
  """Adds user_row, query_z [D] and the padded history (hist_z, hist_age, hist_valid)."""
  examples: Sequence[Example]
  bank: RecordBank
  query_z: np.ndarray  # [N, D], row i = examples[i]
  id_map: dict
  slots: int  # H
  max_history: int = 0  # newest records attended (0: the whole visible history)

  def map(self, ex):
    return {**ex, **self.fields(int(ex["index"]))}

  def fields(self, i: int, *, user: str | None = None, history_of: int | None = None) -> dict:
    """Example i's fields; `user`/`history_of` substitute another user's row / another
    example's history (the controls that ask whether the personal input matters)."""
    e = self.examples[i]
    h = self.examples[i if history_of is None else history_of]
    rows = self.bank.rows(h.user, h.history)
    if self.max_history > 0:
      rows = rows[-self.max_history:]
    g = self.bank.gather([rows], [e.day], self.slots)
    u = e.user if user is None else user
    return {"user_row": np.int32(self.id_map.get(u, -1)), "query_z": self.query_z[i],
            **{k: v[0] for k, v in g.items()}}


def embed_queries(examples: Sequence[Example], embed) -> np.ndarray:
  """[N, D]: each example's query text through `embed` (the bank's embedder)."""
  return np.asarray(embed([e.query for e in examples]), np.float32)


def train_dataset(examples: Sequence[Example], prompts: PromptFormat, config, stage_cfg, *,
                  seed: int, history: HistoryFields | None = None, mesh=None):
  """Shuffled, repeated training batches (`data.pipeline.make_dataset`). With `mesh`, each
  process loads only its rows of each global batch (`setup.process_rows`), and `train_unpad`
  and `train_micro_batches` lay rows out by the batch's shards (`setup.batch_shards`);
  without, one process, one shard."""
  from tapper_jax.training import setup  # setup reaches the methods, which import this module
  source = [{"input": e.input, "target": e.target, "keep": e.keep} for e in examples]
  rows = None if mesh is None else setup.process_rows(mesh, config, stage_cfg.batch_size)
  shards = 1 if mesh is None else setup.batch_shards(mesh, config)
  return make_dataset(source, prompts, max_target_tokens=config.max_target_tokens,
                      batch_size=stage_cfg.batch_size, seed=seed, shuffle=True, num_epochs=None,
                      maps=[history] if history is not None else [],
                      bucket=config.get("train_bucket", 0),
                      group=config.get("train_length_groups", 0), rows=rows,
                      unpad=config.get("train_unpad", 0),
                      shards=shards,
                      micro=setup.micro_batches(config, stage_cfg.batch_size, shards),
                      prefetch=config.data.get("prefetch", 8))


def budget_report(examples: Sequence[Example], prompts: PromptFormat,
                  max_target_tokens: int) -> dict[str, int]:
  """How many examples the token budgets shorten (input) or cut (target: EOS lost)."""
  shortened = sum(prompts.encode(e.input, e.keep)[1] for e in examples)
  cut = sum(prompts.encode_target(e.target, max_target_tokens)[1] for e in examples)
  return {"examples": len(examples), "inputs_shortened": int(shortened),
          "targets_cut": int(cut)}
