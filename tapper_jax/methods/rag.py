"""Retrieval-augmented prompting (the LaMP baselines): k of the user's visible records, picked by
BM25, recency or a dense encoder, written into the prompt with the official per-task template
and token-budget rule (data/retrieval.py). No soft tokens and no per-user parameters.

Zero-shot (`stage2.bridge_lora=False`: nothing trains, the stage-1 backbone is evaluated on the
retrieval-augmented prompts) or trained (the bridge LoRA on retrieval-augmented prompts of the
configured stage-2 examples, as long as the other rows train).

Retrievers (config.rag.retriever):
  bm25     rank_bm25.BM25Okapi over whitespace tokens of the record's corpus text, query the
           official extracted query; best first (as LaMP: `.split()`, no lowercasing)
  recency  the k newest records, newest first
  dense    the sentence encoder (config.encoder): top-k cosine of query and corpus embeddings
Candidates are only the example's own visible history (its user's records before it).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tapper_jax.methods.base import Method

RETRIEVERS = ("bm25", "recency", "dense")


def bm25_top(query: str, corpus: Sequence[str], k: int) -> list[int]:
  """Indices of the k best corpus texts for `query` by BM25Okapi (ties keep corpus order)."""
  from rank_bm25 import BM25Okapi
  if not corpus:
    return []
  scores = BM25Okapi([c.split() for c in corpus]).get_scores(query.split())
  return sorted(range(len(corpus)), key=lambda i: -scores[i])[:k]


class RagMethod(Method):
  name = "rag"
  text_controls = ("no_personal", "other_user")  # no records retrieved; another user's

  def __init__(self, config):
    super().__init__(config)
    if config.rag.retriever not in RETRIEVERS:
      from tapper_jax.errors import ConfigError
      raise ConfigError(f"config.rag.retriever={config.rag.retriever!r}: one of {RETRIEVERS}")
    self._records = self._dense = None

  def _lookup(self, plan) -> dict:
    """(user, record id) -> (fields, day) over every profile the run sees."""
    if self._records is None:
      self._records = {}
      for qs in (plan.stage1_qs, plan.eval_qs):
        for q in qs:
          for r in q.profile:
            self._records.setdefault((q.user_id, r.id), (r.fields, r.day))
    return self._records

  def _dense_vectors(self, plan) -> dict:
    if self._dense is None:
      from tapper_jax.data.retrieval import corpus_text
      from tapper_jax.models import registry
      from tapper_jax.models.bert import SentenceEncoder
      self._encoder = SentenceEncoder.from_pretrained(registry.encoder_folder(self.config.encoder))
      keys = list(self._lookup(plan))
      z = self._encode([corpus_text(plan.spec, self._records[k][0]) for k in keys])
      self._dense = dict(zip(keys, z))
    return self._dense

  def _encode(self, texts):
    from tapper_jax.training.logger import encode_with_bar
    return encode_with_bar(self._encoder.encode, texts, enabled=bool(self.config.progress))

  def retrieve(self, example, plan, query_z=None) -> list[dict]:
    """The fields of the k records picked for `example`, in the retriever's order (dense:
    `query_z` is the example's query embedding)."""
    from tapper_jax.data.retrieval import corpus_text
    records = self._lookup(plan)
    ids = [h for h in example.history if (example.user, h) in records]
    k, how = self.config.rag.k, self.config.rag.retriever
    if how == "recency":  # histories are oldest first; stable for same-day records
      order = sorted(range(len(ids)), key=lambda i: records[(example.user, ids[i])][1])[::-1]
    elif how == "bm25":
      order = bm25_top(example.query, [corpus_text(plan.spec, records[(example.user, i)][0])
                                        for i in ids], k)
    else:
      vec = self._dense_vectors(plan)
      if not ids:
        return []
      sims = np.stack([vec[(example.user, i)] for i in ids]) @ query_z
      order = sorted(range(len(ids)), key=lambda i: -sims[i])
    return [records[(example.user, ids[i])][0] for i in order[:k]]

  def prompts(self, examples: Sequence, plan, tokenizer, prompt_format) -> list:
    from tapper_jax.data.retrieval import rag_prompt
    overhead = len(prompt_format.tokenizer.encode(prompt_format.render("")))
    max_length = prompt_format.max_prompt_tokens - overhead
    qz = [None] * len(examples)
    if self.config.rag.retriever == "dense":
      self._dense_vectors(plan)
      qz = self._encode([e.query for e in examples])
    out = []
    for e, z in zip(examples, qz):
      text, keep = rag_prompt(plan.spec, e.input, self.retrieve(e, plan, z), max_length,
                              tokenizer)
      out.append(dataclasses.replace(e, input=text, keep=keep))
    return out
