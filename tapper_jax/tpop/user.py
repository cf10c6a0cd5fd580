"""A simulated user with a hidden preference: a deterministic rule scores each response, the
higher score wins, and an optional noise flips the verdict. The attribute never appears in the
prompt, so nothing can be gamed from it.

Attributes:
  concise   fewer words
  numbers   more digits
  formal    fewer informal marks (contractions, '!', first person singular, slang)
  casual    more informal marks (formal's mirror: a user who likes a conversational tone)
  positive  more positive than negative words (a small fixed lexicon)
  vader     a more positive VADER compound score (Hutto & Gilbert, ICWSM 2014: a published
            7,500-entry valence lexicon with negation, intensifier and "but" rules): positive
            tone judged by a fixed scorer that tells most headlines apart, where the small
            lexicon above ties four pairs in five
  sentence  sentence-case headlines (as AP or the Guardian write them): a smaller share of the
            words after the first starting with a capital, counting one capitalized word of
            prior so that an empty or one-word answer shows no style (scores as title case)
  question  asks a question: a '?' (1) or none (0)
  topic:X   mentions X (case-insensitive), then fewer words
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

POSITIVE = frozenset("good great best love happy win wins won success successful hope bright "
                     "beautiful amazing wonderful excellent joy celebrate celebrates better "
                     "inspiring kind free peace perfect strong".split())
NEGATIVE = frozenset("bad worst hate sad lose loses lost fail fails failure dark ugly terrible "
                     "awful crisis war death dies dead kill killed attack fear angry worse "
                     "weak".split())
INFORMAL = re.compile(r"(\w+'(s|re|ll|ve|d|t|m)\b)|!|\b(i|me|my|lol|gonna|wanna|yeah|ok|okay)\b",
                      re.IGNORECASE)
ATTRIBUTES = ("concise", "numbers", "formal", "casual", "positive", "vader", "sentence",
              "question")


@functools.cache
def _vader():
  from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
  return SentimentIntensityAnalyzer()


def words(text: str) -> list[str]:
  """The words a rule counts: runs of letters, digits and apostrophes."""
  return re.findall(r"[a-z0-9']+", text.lower())


def score(attribute: str, text: str) -> float:
  """The hidden rule's score of one response (higher is preferred)."""
  ws = words(text)
  if attribute == "concise":
    return -float(len(ws))
  if attribute == "numbers":
    return float(sum(ch.isdigit() for ch in text))
  if attribute in ("formal", "casual"):
    informal = float(len(INFORMAL.findall(text)))
    return -informal if attribute == "formal" else informal
  if attribute == "positive":
    return float(sum(w in POSITIVE for w in ws) - sum(w in NEGATIVE for w in ws))
  if attribute == "vader":
    return float(_vader().polarity_scores(text)["compound"])
  if attribute == "sentence":
    later = re.findall(r"[A-Za-z][A-Za-z']*", text)[1:]
    return -(sum(w[0].isupper() for w in later) + 1.0) / (len(later) + 1.0)
  if attribute == "question":
    return float("?" in text)
  if attribute.startswith("topic:"):
    topic = attribute.split(":", 1)[1].lower()
    return (1000.0 if topic in text.lower() else 0.0) - len(ws)
  raise ValueError(f"unknown attribute {attribute!r}; known: {ATTRIBUTES} and topic:WORD")


# The best score a response can have, where the rule has one: a response with no informal mark
# is as formal as any. Other rules always have a better response to give.
BEST = {"formal": 0.0}


def ceiling(attribute: str, references: list[str]) -> float:
  """The highest win rate any responses can reach against `references` (win 1, tie 0.5): a
  reference already at the rule's best score can only be tied."""
  best = BEST.get(attribute)
  if best is None:
    return 1.0
  return float(np.mean([0.5 if score(attribute, r) >= best else 1.0 for r in references]))


@dataclasses.dataclass
class SimulatedUser:
  attribute: str
  noise: float = 0.0  # probability of flipping a verdict
  seed: int = 0

  def __post_init__(self):
    score(self.attribute, "")  # fails early on an unknown attribute
    self.rng = np.random.default_rng(self.seed)

  def preference(self, a: str, b: str, refused: tuple[bool, bool] = (False, False)) -> int | None:
    """+1 if the user prefers a, -1 if b, None if the rule cannot tell them apart (a user shown
    two equally good answers states no preference; recording one would teach noise). Noise
    flips a stated preference. `refused`: which answers the user refuses as broken (`refuses`);
    one refused loses to one that is not, whatever the rule says."""
    if refused[0] != refused[1]:
      return 1 if self._noisy(refused[1]) else -1
    sa, sb = score(self.attribute, a), score(self.attribute, b)
    if sa == sb:
      return None
    return 1 if self._noisy(sa > sb) else -1

  def prefers_first(self, a: str, b: str) -> bool:
    """True if the user prefers response a to b. Ties go to b (a must be strictly better)."""
    return self._noisy(score(self.attribute, a) > score(self.attribute, b))

  def _noisy(self, first: bool) -> bool:
    """The verdict, flipped with probability `noise`."""
    if self.noise and self.rng.random() < self.noise:
      return not first
    return first

  def wins(self, a: str, b: str) -> float:
    """1 if a is strictly better, 0.5 on a tie, 0 if worse (noise-free: for evaluation)."""
    sa, sb = score(self.attribute, a), score(self.attribute, b)
    return 1.0 if sa > sb else 0.5 if sa == sb else 0.0


def rule_pairs(attribute: str, texts: list[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
  """Up to n (preferred, other) pairs of distinct `texts` drawn at random, ordered by the hidden
  rule, ties skipped: the labels an oracle reward is fit on (benchmarks/tpop_w.py)."""
  rng = np.random.default_rng(seed)
  s = np.array([score(attribute, t) for t in texts])
  pairs = []
  for _ in range(20 * n):  # draws: rules that tie often give fewer pairs
    i, j = rng.choice(len(texts), 2, replace=False)
    if s[i] != s[j]:
      pairs.append((texts[i], texts[j]) if s[i] > s[j] else (texts[j], texts[i]))
      if len(pairs) == n:
        break
  return pairs


def refuses(logprob: float, greedy_logprob: float, gate: float) -> bool:
  """Whether a user who refuses broken text refuses an answer: the frozen LLM finds it more
  than `gate` nats per token less likely than its own greedy answer to the same query, or it is
  empty (log p nan) where greedy's is not. The rules above count words and marks, so an answer
  of rare tokens strung together can win them; a reader would not take it."""
  if np.isnan(greedy_logprob):
    return False
  return not logprob >= greedy_logprob - gate


def gated_win(win: float, logprob: float, greedy_logprob: float, gate: float) -> float:
  """The verdict `win` of a rule against greedy's answer, from a user who first refuses broken
  text (`refuses`): a refused answer loses whatever the rule says."""
  return 0.0 if refuses(logprob, greedy_logprob, gate) else win
