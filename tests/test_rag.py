"""RAG baselines: BM25 against a hand computation, recency order, the official prompt and budget
rule on a word tokenizer, retrieval from the example's own visible history only, and zero-shot
and trained runs through the harness."""

import math
import os
import sys

import pytest

from lamp_fixtures import write_setting
from tapper_jax.data import retrieval
from tapper_jax.data.tasks import get_task
from tapper_jax.methods.rag import bm25_top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


def _bm25_by_hand(query, corpus, k1=1.5, b=0.75, eps=0.25):
  docs = [c.split() for c in corpus]
  n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
  df = {}
  for d in docs:
    for w in set(d):
      df[w] = df.get(w, 0) + 1
  idf = {w: math.log(n - m + 0.5) - math.log(m + 0.5) for w, m in df.items()}
  floor = eps * sum(idf.values()) / len(idf)
  idf = {w: (floor if v < 0 else v) for w, v in idf.items()}
  return [sum(idf.get(q, 0) * d.count(q) * (k1 + 1) /
              (d.count(q) + k1 * (1 - b + b * len(d) / avgdl)) for q in query.split())
          for d in docs]


def test_bm25_ranking_equals_a_hand_computed_bm25okapi():
  corpus = ["the senate passed the budget bill", "rain floods the city centre again",
            "senate votes on climate bill", "a cat sat on the mat", "Senate bill bill bill",
            "city council passes rain bill"]
  query = "senate bill rain"
  from rank_bm25 import BM25Okapi
  lib = BM25Okapi([c.split() for c in corpus]).get_scores(query.split())
  hand = _bm25_by_hand(query, corpus)
  assert max(abs(x - y) for x, y in zip(lib, hand)) < 1e-9
  expect = sorted(range(len(corpus)), key=lambda i: -hand[i])[:3]
  assert bm25_top(query, corpus, 3) == expect
  assert bm25_top(query, [], 3) == []


class _Words:
  """A word-level tokenizer: one token per whitespace-separated word."""

  def encode(self, s):
    return s.split()

  def decode(self, ids):
    return " ".join(ids)


def test_rag_prompt_follows_the_official_template_and_budget_rule():
  spec = get_task("LaMP_2N")
  tok = _Words()
  inp = "Which category? article: the vote was close"  # 7 words
  recs = [{"text": " ".join(f"a{i}" for i in range(30)), "category": "politics"},
          {"text": "b0 b1", "category": "sports"}]
  prompt, keep = retrieval.rag_prompt(spec, inp, recs, 40, tok)
  # max_len_prompt = 40 - min(7, 24) = 33; per item = (33 - 1 - 2) // 2 = 15; the empty item
  # 'the category for the article: " " is "politics" ' is 9 words: item 1 keeps 15 - 9 = 6
  # words; it used its whole budget, so item 2 gets 15 - 9 = 6 words too (it has 2).
  item1 = 'the category for the article: "a0 a1 a2 a3 a4 a5" is "politics" '
  item2 = 'the category for the article: "b0 b1" is "sports" '
  assert prompt == f"{item1}, and {item2}. {inp}"
  assert prompt[keep:] == "the vote was close"  # only the query text may be shortened
  # Unused budget rolls over: a short first item leaves more for the second.
  prompt2, _ = retrieval.rag_prompt(spec, inp, recs[::-1], 40, tok)
  assert '"a0 a1 a2 a3 a4 a5 a6 a7 a8 a9" is "politics"' in prompt2  # 6 + 4 saved
  # The query reserves at most 60% of the budget; when the items cannot fit, factor drops.
  long_inp = "Which category? article: " + " ".join(["w"] * 100)
  prompt3, _ = retrieval.rag_prompt(spec, long_inp, recs, 40, tok)
  assert prompt3.endswith(long_inp) and prompt3.count("the category for the article") == 2
  assert retrieval.rag_prompt(spec, inp, [], 40, tok) == (inp, spec.keep(inp))


def test_lamp1_and_lamp7_compositions():
  tok = _Words()
  one = get_task("LaMP_1")
  inp = 'For an author who has written the paper with the title "Deep Nets", which reference?'
  prompt, _ = retrieval.rag_prompt(one, inp, [{"title": "Old Paper"}], 40, tok)
  assert prompt.startswith('For an author who has written the paper with the title, and '
                           '"Old Paper" "Deep Nets"')
  seven = get_task("LaMP_7")
  prompt, _ = retrieval.rag_prompt(seven, "Paraphrase: so tired", [{"text": "x y"}], 40, tok)
  assert prompt == '"x y"  are written by a person. Following the given patterns Paraphrase: so tired'


@pytest.mark.parametrize("retriever", ["bm25", "recency"])
def test_retrieval_reads_only_the_examples_own_visible_history(retriever, tmp_path):
  import rag as rag_config
  from tapper_jax.training.loop import plan
  c = rag_config.get_config(f"lamp2:time:{retriever},2")
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, "time")
  p = plan(c, str(tmp_path))
  records = p.method._lookup(p)
  for e in p.evaluate + p.stage2:
    got = p.method.retrieve(e, p)
    visible = [records[(e.user, h)] for h in e.history]
    assert len(got) == min(2, len(visible))
    assert all(any(g is f for f, _ in visible) for g in got)
    if retriever == "recency" and got:
      newest = sorted(visible, key=lambda r: r[1])[::-1][:2]
      assert got == [f for f, _ in newest]


def test_rag_controls_retrieve_no_records_or_another_users(tmp_path, model_cache):
  """The text form of the controls: no records (the plain question), or the records another
  evaluated user could see (the other-user pairing), retrieved for this question."""
  import dataclasses
  import rag as rag_config
  from tapper_jax.training.loop import control_examples, other_user_example, plan
  c = rag_config.get_config("lamp2:time:bm25,2")
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, "time")
  p = plan(c, str(tmp_path))
  ev = p.evaluate
  from tapper_jax import models
  from tapper_jax.data.prompts import PromptFormat
  tok = models.load("tiny-random")[1]
  fmt = PromptFormat(tok, 256, chat=False)
  own = p.method.prompts(ev, p, tok, fmt)
  none = p.method.prompts(control_examples("no_personal", ev), p, tok, fmt)
  other = p.method.prompts(control_examples("other_user", ev), p, tok, fmt)
  pair = other_user_example(ev)
  records = p.method._lookup(p)
  assert [n.input for n in none] == [e.input for e in ev]
  assert sum(o.input != w.input for o, w in zip(own, other)) > len(ev) // 2
  for e, o in zip(ev, other):
    donor = ev[pair[e.user]]
    assert donor.user != e.user and o.id == e.id and o.query == e.query
    picked = p.method.retrieve(dataclasses.replace(e, user=donor.user, history=donor.history), p)
    assert picked and all(any(g is records[(donor.user, h)][0] for h in donor.history)
                          for g in picked)
    assert o.input == retrieval.rag_prompt(p.spec, e.input, picked, 256 - len(
        tok.encode(fmt.render(""))), tok)[0]


@pytest.mark.parametrize("variant", [
    "bm25,2,zeroshot", pytest.param("recency,1", marks=pytest.mark.slow)])  # trained: slow
def test_rag_runs_zero_shot_and_trained_through_the_harness(variant, model_cache, tmp_path):
  import rag as rag_config
  from tapper_jax.training.loop import train_and_evaluate
  c = rag_config.get_config(f"synthetic:tiny:{variant}")
  c.progress = False
  c.eval_controls = ("no_personal", "other_user", "cold")  # cold needs a row: skipped
  c.eval_nll = True
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  s2 = summary["stages"]["2"]
  zeroshot = "zeroshot" in variant
  ev = summary["eval"]
  none, other = ev[f"{c.name}, no personal input"], ev[f"{c.name}, another user's input"]
  assert f"{c.name}, own history, no user row" not in ev
  assert all(v["gold_nll"] > 0 for v in (none, other, ev[c.name]))
  if zeroshot:  # no records retrieved, nothing trained: the backbone's own answers and NLL
    assert none == ev["non-personalized"]
    assert other["gold_nll"] != ev[c.name]["gold_nll"]
  assert s2["steps"] == (0 if zeroshot else 2) and s2["users"] == 0
  assert c.name in summary["eval"] and "non-personalized" in summary["eval"]
  trained = os.path.isdir(os.path.join(str(tmp_path / "run"), "stage2", "checkpoints"))
  assert trained == (not zeroshot)
