"""Per-task knowledge of LaMP, in one place.

For each task: the profile fields a record must carry, how the official LaMP code extracts the
query text from a question's input (LaMP/prompts/utils.py), the template that turns a record
into the text we embed (`record_text`), how one of a user's own records becomes a training
example (`record_example`: the LaMP-style input and its target; LaMP-1 and LaMP-7 records,
which hold no question of their own, follow the per-record tasks of per-user training: write
a paper's abstract from its title, complete a tweet from its opening words), and the label set.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tapper_jax import metrics


def extract_strings_between_quotes(s: str) -> list[str]:
  out, inside, cur = [], False, ""
  for ch in s:
    if ch == '"' and not inside:
      inside = True
    elif ch == '"' and inside:
      inside = False
      out.append(cur)
      cur = ""
    elif inside:
      cur += ch
  return out


def extract_after(marker: str) -> Callable[[str], str | None]:
  def f(s: str) -> str | None:
    i = s.find(marker)
    return None if i == -1 else s[i + len(marker):].strip()
  return f


def _citation_query(s: str) -> str | None:
  q = extract_strings_between_quotes(s)
  return f"{q[1]} {q[2]}" if len(q) >= 3 else None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str  # canonical: LaMP_1, LaMP_2M, ...
  kind: str  # "classification" | "regression" | "generation"
  profile_fields: tuple[str, ...]  # besides "id" and "date"
  query_extractor: Callable[[str], str | None]
  record_template: str  # str.format over the record's fields: the text we embed
  # LaMP-style prompt of a record (None: records make no example); "{labels}" is replaced by
  # the task's label list, the rest is str.format over the record's fields.
  prompt: str | None
  target_field: str | None
  labels: tuple[str, ...] = ()
  # A record's (input, target) when it is not `prompt` -> `target_field` (LaMP-1, LaMP-7).
  record_fn: Callable[[dict], tuple[str, str] | None] | None = None

  @property
  def input_template(self) -> str | None:
    return None if self.prompt is None else self.prompt.replace("{labels}", ", ".join(self.labels))

  def query(self, question_input: str) -> str:
    """The query text, extracted as the official LaMP code does; the whole input if it fails."""
    q = self.query_extractor(question_input)
    return q if q else question_input.strip()

  def keep(self, text: str) -> int:
    """Characters of an input that shortening never cuts: everything before its query text
    (the instruction, the label list). 0 when the query is not a tail of the input."""
    q = self.query(text)
    i = text.rfind(q)
    return i if i > 0 and text[i:].strip() == q.strip() else 0

  def record_text(self, fields: dict) -> str:
    return self.record_template.format(**fields)

  def record_example(self, fields: dict) -> tuple[str, str] | None:
    """(input, target) of one of a user's records as a training example; None if it makes none."""
    if self.record_fn is not None:
      return self.record_fn(fields)
    if self.input_template is None:
      return None
    return self.input_template.format(**fields), str(fields[self.target_field])

  def with_labels(self, labels) -> "TaskSpec":
    return dataclasses.replace(self, labels=tuple(labels))


def _abstract_from_title(fields: dict) -> tuple[str, str] | None:
  title, abstract = str(fields.get("title", "")).strip(), str(fields.get("abstract", "")).strip()
  if not title or not abstract:
    return None
  return f"Write an abstract for this title: {title}", abstract


def _tweet_completion(fields: dict) -> tuple[str, str] | None:
  """The opening half of a tweet's words -> the rest (a tweet of one word makes no example)."""
  words = str(fields.get("text", "")).split()
  if len(words) < 2:
    return None
  k = len(words) // 2
  return f"Complete the following tweet: {' '.join(words[:k])}", " ".join(words[k:])


_2M_PROMPT = ("Which tag does this movie relate to among the following tags? Just answer with the tag "
              "name without further explanation. tags: [{labels}] description: {description}")
_2N_PROMPT = ("Which category does this article relate to among the following categories? Just answer "
              "with the category name without further explanation. categories: [{labels}] "
              "article: {text}")

TASKS: dict[str, TaskSpec] = {
    "LaMP_1": TaskSpec(
        "LaMP_1", "classification", ("title",), _citation_query,
        "title: {title}", None, None, tuple(metrics.LABELS["LaMP_1"]),
        record_fn=_abstract_from_title),
    "LaMP_2M": TaskSpec(
        "LaMP_2M", "classification", ("description", "tag"), extract_after("description:"),
        "description: {description} tag: {tag}",
        _2M_PROMPT, "tag",
        tuple(metrics.LABELS["LaMP_2M"])),
    "LaMP_2N": TaskSpec(
        "LaMP_2N", "classification", ("text", "title", "category"), extract_after("article:"),
        "article: {title} {text} category: {category}",
        _2N_PROMPT, "category",
        tuple(metrics.LABELS["LaMP_2N"])),
    "LaMP_3": TaskSpec(
        "LaMP_3", "regression", ("text", "score"), extract_after("review:"),
        "review: {text} score: {score}",
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, "
        "3, 4, or 5 without further explanation. review: {text}", "score",
        tuple(metrics.LABELS["LaMP_3"])),
    "LaMP_4": TaskSpec(
        "LaMP_4", "generation", ("text", "title"), extract_after("article:"),
        "article: {text} headline: {title}",
        "Generate a headline for the following article: {text}", "title"),
    "LaMP_5": TaskSpec(
        "LaMP_5", "generation", ("title", "abstract"), extract_after(":"),
        "abstract: {abstract} title: {title}",
        "Generate a title for the following abstract of a paper: {abstract}", "title"),
    "LaMP_6": TaskSpec(
        "LaMP_6", "generation", ("text", "title"), extract_after(":"),
        "email: {text} subject: {title}", "Generate a subject for the following email: {text}",
        "title"),
    "LaMP_7": TaskSpec(
        "LaMP_7", "generation", ("text",), extract_after(":"), "tweet: {text}",
        None, None, record_fn=_tweet_completion),
}


def get_task(name: str) -> TaskSpec:
  return TASKS[metrics.canonical_task(name)]

