"""Retrieval-augmented LaMP prompts, as the official LaMP code builds them
(github.com/LaMP-Benchmark/LaMP: LaMP/prompts/prompts.py, create_prompt_generator).

Per task: the text a retriever indexes for a record (`corpus`), the query (TaskSpec.query: the
official extractors), and how k retrieved records are written into the prompt. The token
budget rule, verbatim in spirit:

  max_len_prompt = max_length - min(len(tok(input)), int(factor * max_length))   factor = 0.6
  per_item       = (max_len_prompt - 1 - 2 (k - 1) - len(tok(suffix))) // k       (LaMP-1: no -1)
  each item's text field is cut to per_item + saved - len(tok(empty item)) tokens, and what an
  item leaves unused is saved for the next; if a budget goes non-positive, factor -= 0.1 and
  the whole prompt is rebuilt (at factor < 0 the input is used alone).

Token counts are our tokenizer's (the official code counts T5's, with its </s>). The items keep
the retriever's order (best or newest first) and are joined with ", and ".
"""

from __future__ import annotations

import dataclasses
import string

from tapper_jax.data.tasks import TaskSpec


class _Missing(dict):
  def __missing__(self, key):
    return ""


def _fmt(template: str, fields: dict, **extra) -> str:
  return string.Formatter().vformat(template, (), _Missing({**fields, **extra}))


@dataclasses.dataclass(frozen=True)
class RagTemplate:
  corpus: str  # str.format over a record's fields: the text the retrievers index
  text_field: str  # the record field each item's budget cuts
  item: str  # one retrieved record in the prompt: {text} is the cut field, the rest its fields
  empty_item: str | None  # the item as the official code measures it (text slot empty)
  ending: str = ". "  # between the items and the input
  suffix: str = ""  # a phrase whose tokens the per-item budget also reserves
  after_title: bool = False  # LaMP-1: items go after the first "title" in the input


TEMPLATES = {
    "LaMP_1": RagTemplate("{title} {abstract}", "title", '"{text}"', None, after_title=True),
    "LaMP_2N": RagTemplate("{title} {text}", "text",
                           'the category for the article: "{text}" is "{category}" ',
                           'the category for the article: " " is "{category}" '),
    "LaMP_2M": RagTemplate("{description}", "description",
                           'the tag for the movie: "{text}" is "{tag}" ',
                           'the tag for the movie: " " is "{tag}" '),
    "LaMP_3": RagTemplate("{text}", "text", '{score} is the score for "{text}" ',
                          '{score} is the score for " " '),
    "LaMP_4": RagTemplate("{title} {text}", "text", '"{title}" is the title for "{text}" ',
                          '"{title}" is the title for " " '),
    "LaMP_5": RagTemplate("{title} {abstract}", "abstract", '"{title}" is a title for "{text}" ',
                          '"{title}" is a title " " ', ending=". Following the given patterns ",
                          suffix="Following the given patterns"),
    "LaMP_6": RagTemplate("{text}", "text", '"{title}" is the title for "{text}" ',
                          '"{title}" is the title for " " '),
    "LaMP_7": RagTemplate("{text}", "text", '"{text}" ', '"" ',
                          ending=" are written by a person. Following the given patterns ",
                          suffix="are written by user. Following the given patterns"),
}


def corpus_text(spec: TaskSpec, fields: dict) -> str:
  """The text a retriever indexes for one record."""
  return _fmt(TEMPLATES[spec.name].corpus, fields).strip()


class _Budget(Exception):
  """A token budget went non-positive (the official code's tokenizer raises here)."""


def _items(t: RagTemplate, records: list[dict], max_len: int, tokenizer) -> list[str]:
  k = len(records)
  n = lambda s: len(tokenizer.encode(s))  # noqa: E731
  fixed = (0 if t.after_title else 1) + 2 * (k - 1) + (n(t.suffix) if t.suffix else 0)
  per_item = (max_len - fixed) // k
  saved, out = 0, []
  for r in records:
    needed = 2 if t.empty_item is None else n(_fmt(t.empty_item, r))
    allowed = per_item + saved - needed
    if allowed <= 0:
      raise _Budget
    ids = tokenizer.encode(str(r.get(t.text_field, "")))[:allowed]
    saved += per_item - len(ids) - needed
    out.append(_fmt(t.item, r, text=tokenizer.decode(ids)))
  return out


def rag_prompt(spec: TaskSpec, question_input: str, records: list[dict], max_length: int,
               tokenizer) -> tuple[str, int]:
  """(prompt, keep): the input with the retrieved records (their fields, in retrieval order)
  written in by the official template and budget rule. `keep`: characters shortening never cuts
  (the items and the instruction; see PromptFormat.encode)."""
  if not records:
    return question_input, spec.keep(question_input)
  t = TEMPLATES[spec.name]
  n_input = len(tokenizer.encode(question_input))
  factor = 0.6
  while factor >= 0:
    try:
      items = _items(t, records, max_length - min(n_input, int(factor * max_length)), tokenizer)
      break
    except _Budget:
      factor = round(factor - 0.1, 10)
  else:
    return question_input, spec.keep(question_input)
  joined = ", and ".join(items)
  if t.after_title:
    i = question_input.find("title")
    if i == -1:
      return question_input, spec.keep(question_input)
    return question_input[:i + 5] + ", and " + joined + question_input[i + 5:], 0
  head = joined + t.ending
  return head + question_input, len(head) + spec.keep(question_input)
