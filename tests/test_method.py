"""TAP-PER as the paper trains it: the loss against a plain full-logits cross-entropy, the users
and examples each shipped config trains on (no evaluated gold ever trained on), LoRA's init
against peft's, and prompt/target tokenization against the concatenated text."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lamp_fixtures import write_setting
from tapper_jax import models
from tapper_jax.data.prompts import PromptFormat
from tapper_jax.data.tasks import get_task
from tapper_jax.models.lora import attach_lora
from tapper_jax.tapper.model import PersonalizedLM, Tapper, lm_loss
from tapper_jax.training import examples as exm
from tapper_jax.training.loop import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _attach_trained_looking_lora(llm):
  """A rank-4 LoRA whose B is not zero, so that it takes part in the loss and its gradients."""
  attach_lora(llm, rank=4, alpha=8.0, key=jax.random.PRNGKey(1))
  for _, mod in nnx.iter_graph(llm):
    if getattr(mod, "lora_b", None) is not None:
      mod.lora_b.set_value(0.05 * jax.random.normal(jax.random.PRNGKey(2), mod.lora_b.get_value().shape))


@pytest.fixture(scope="module")
def tiny():
  return models.load("tiny-random")


def test_loss_equals_a_plain_full_logits_cross_entropy(tiny, model_cache):
  """lm_loss (logits at the K target slots only) against: full logits over [prefix, prompt,
  target], shifted by one, cross-entropy where the pipeline's loss_mask says, averaged."""
  llm, tok = tiny
  d = llm.config.hidden_size
  _attach_trained_looking_lora(llm)
  model = PersonalizedLM(llm, Tapper(d, 3, 2, rngs=nnx.Rngs(3)))
  fmt = PromptFormat(tok, 40, chat=False)
  src = [{"input": "Which tag? description: a robot", "target": "sci-fi"},
         {"input": "Which tag? description: two friends on a long, long road trip",
          "target": "comedy and road movie"}]
  from tapper_jax.data.pipeline import make_dataset
  host = next(iter(make_dataset(src, fmt, max_target_tokens=8, batch_size=2, shuffle=False)))
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(host[k]) for k in ("input_ids", "attention_mask", "target_pos",
                                               "target_valid")}
  batch.update(user_row=jnp.array([1, -1], jnp.int32),
               query_z=jnp.asarray(rng.normal(size=(2, d)), jnp.float32),
               hist_z=jnp.asarray(rng.normal(size=(2, 8, d)), jnp.float32),
               hist_age=jnp.asarray(rng.uniform(0, 9, size=(2, 8)), jnp.float32),
               hist_valid=jnp.arange(8)[None, :] < jnp.array([[5], [2]]))
  loss, count = lm_loss(model, batch)

  emb, mask = model.inputs(batch)  # [prefix(3), prompt + target, padding]
  logits, _ = llm(inputs_embeds=emb, attention_mask=mask)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  ids, lm = host["input_ids"], host["loss_mask"]
  total, n = 0.0, 0
  for b in range(2):
    for t in range(ids.shape[1]):
      if lm[b, t]:  # token t of the text sits at slot 3 + t; slot 3 + t - 1 predicts it
        total -= float(logp[b, 3 + t - 1, ids[b, t]])
        n += 1
  assert n == int(count) == int(host["target_valid"].sum())
  np.testing.assert_allclose(float(loss), total / n, rtol=1e-5)
  # The same reference shifted by one position is far off: the test can tell.
  shifted = -np.mean([logp[b, 3 + t, ids[b, t]] for b in range(2)
                      for t in range(ids.shape[1]) if lm[b, t]])
  assert abs(shifted - total / n) > 0.1


def test_gold_nll_equals_a_plain_cross_entropy_per_question(model_cache):
  """evaluation.gold_nll (batched, the last batch padded, each row its own prefix inputs)
  against each question alone: full logits over [prefix, prompt, target], the gold's tokens
  scored one slot before them, averaged. Another question's prefix inputs change the value."""
  from tapper_jax.training.evaluation import gold_nll
  llm, tok = models.load("tiny-random")
  d = llm.config.hidden_size
  _attach_trained_looking_lora(llm)
  model = PersonalizedLM(llm, Tapper(d, 3, 2, rngs=nnx.Rngs(3)))
  fmt = PromptFormat(tok, 40, chat=False)
  texts = [("Headline? article: a robot wins chess", "Robot Beats Champion"),
           ("Headline? article: two friends drive across the country", "Road Trip"),
           ("Headline? article: rain", "Storms Ahead For The Weekend In Ohio")]
  ev = [exm.Example(f"q{i}", f"u{i}", a, b, a, 0.0) for i, (a, b) in enumerate(texts)]
  rng = np.random.default_rng(0)
  per = [{"user_row": np.int32(i - 1), "query_z": rng.normal(size=(d,)).astype(np.float32),
          "hist_z": rng.normal(size=(8, d)).astype(np.float32),
          "hist_age": rng.uniform(0, 9, size=(8,)).astype(np.float32),
          "hist_valid": np.arange(8) < 2 + 2 * i} for i in range(3)]

  class Config(dict):
    __getattr__ = dict.get
  config = Config(eval_batch_size=2, max_target_tokens=8)
  got = gold_nll(model, ev, fmt, config, lambda i: per[i])

  want = []
  for e, f in zip(ev, per):
    prompt, target = fmt.encode(e.input)[0], fmt.encode_target(e.target, 8)[0]
    ids = np.asarray([prompt + target], np.int32)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids),
             **{k: jnp.asarray(v)[None] for k, v in f.items()}}
    emb, mask = model.inputs(batch)
    logits, _ = llm(inputs_embeds=emb, attention_mask=mask)
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64)[0], axis=-1)
    want.append(-np.mean([logp[3 + t - 1, ids[0, t]]
                          for t in range(len(prompt), len(prompt) + len(target))]))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert len(set(np.round(want, 4))) == 3  # the rows differ: a mixed-up order would fail
  swapped = gold_nll(model, ev, fmt, config, lambda i: per[(i + 1) % 3])
  assert np.abs(swapped - got).max() > 1e-4  # the prefix inputs are read


def test_lora_a_init_matches_peft(model_cache):
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  d_in, d_out, r = 576, 192, 8
  lin = torch.nn.Sequential()
  lin.add_module("q_proj", torch.nn.Linear(d_in, d_out, bias=False))
  torch.manual_seed(0)
  pm = peft.get_peft_model(lin, peft.LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj"]))
  a_peft = pm.base_model.model.q_proj.lora_A["default"].weight.detach().numpy()  # [r, in]
  b_peft = pm.base_model.model.q_proj.lora_B["default"].weight.detach().numpy()

  from tapper_jax.models.llama import Linear
  from tapper_jax.models.config import LlamaConfig
  cfg = LlamaConfig(hidden_size=d_in, intermediate_size=d_out, num_hidden_layers=1,
                    num_attention_heads=3, num_key_value_heads=1, vocab_size=32, head_dim=192)
  m = models.LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  attach_lora(m, rank=r, alpha=16.0, targets=("q_proj",), key=jax.random.PRNGKey(0))
  a_ours = np.asarray(m.model.layers.self_attn.q_proj.lora_a.get_value())[0]  # [in, r]
  assert isinstance(m.model.layers.self_attn.q_proj, Linear)
  bound = 1 / np.sqrt(d_in)
  for a in (a_peft, a_ours):
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.98 * bound  # U(-1/sqrt(in), ..)
    assert abs(a.std() - bound / np.sqrt(3)) < 0.05 * bound / np.sqrt(3)
    assert abs(a.mean()) < 0.05 * bound
  assert abs(a_ours.std() - a_peft.std()) / a_peft.std() < 0.05
  np.testing.assert_array_equal(b_peft, 0.0)
  np.testing.assert_array_equal(np.asarray(m.model.layers.self_attn.q_proj.lora_b.get_value()), 0)


@pytest.mark.parametrize("chat", [False, True])
def test_prompt_plus_target_tokenizes_as_the_concatenation(tiny, chat):
  _, tok = tiny
  fmt = PromptFormat(tok, 512, chat=chat)
  spec = get_task("LaMP_2M")
  prompt = spec.input_template.format(description="Two friends drive across the country.")
  for target in ("comedy", "sci-fi", "dark comedy", "based on a book", "3", "U.S. News"):
    ids, _ = fmt.encode(prompt, spec.keep(prompt))
    tgt, cut = fmt.encode_target(target, 16)
    whole = tok.encode(fmt.render(prompt) + fmt.target_text(target))
    assert ids + tgt[:-1] == whole and tgt[-1] == tok.eos_id and not cut
  if not chat:  # " comedy" is one token, not a lone space then "com" + "edy"
    assert len(fmt.encode_target("comedy", 16)[0]) == 2


def test_a_long_input_keeps_its_instruction_and_label_list(tiny):
  _, tok = tiny
  spec = get_task("LaMP_2N")
  text = spec.input_template.format(text="word " * 400)
  for chat in (False, True):
    fmt = PromptFormat(tok, 120, chat=chat)
    ids, shortened = fmt.encode(text, spec.keep(text))
    assert shortened and len(ids) <= 120
    out = tok.decode(ids)
    assert "Which category does this article relate to" in out
    assert ", ".join(spec.labels) in out and "article: word word" in out
    assert out.rstrip().endswith("Answer:" if not chat else "assistant")


def test_lamp1_and_lamp7_records_make_training_examples():
  one = get_task("LaMP_1").record_example({"title": "Deep Nets", "abstract": "We train nets."})
  assert one == ("Write an abstract for this title: Deep Nets", "We train nets.")
  assert get_task("LaMP_1").record_example({"title": "Deep Nets"}) is None  # no abstract
  seven = get_task("LaMP_7").record_example({"text": "so tired after the long day today"})
  assert seven == ("Complete the following tweet: so tired after", "the long day today")
  assert get_task("LaMP_7").record_example({"text": "tired"}) is None


def _shipped_configs():
  out = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "lamp*.py"))):
    for setting in ("time", "user", "oppu"):
      out.append((path, setting))
  for variant in ("huffpost_2N", "huffpost_4", "movielens_3", "movielens_2M"):
    out.append((os.path.join(REPO, "configs", "offline.py"), variant))
  for variant in ("lamp2:time", "lamp2:user", "lamp2:oppu", "lamp7:oppu", "huffpost_2N"):
    out.append((os.path.join(REPO, "configs", "pplug.py"), variant))
  return out


@pytest.mark.parametrize("path,variant", _shipped_configs(),
                         ids=lambda x: os.path.basename(x) if "/" in str(x) else str(x))
def test_every_evaluated_user_is_trained_and_no_evaluated_gold_is_trained_on(path, variant,
                                                                             tmp_path):
  c = _config_module(path).get_config(variant)
  setting = variant.rpartition(":")[2]
  setting = setting if setting in ("time", "user", "oppu") else "time"
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, setting)
  p = plan(c, str(tmp_path))
  assert p.eval_qs and p.stage1 and p.stage2
  evaluated = {q.user_id for q in p.eval_qs}
  if c.method == "tapper":
    assert evaluated <= set(p.users)  # every evaluated user has a P_u row
  else:  # PPlug: no per-user parameters at all
    assert c.method == "pplug" and not p.users
  assert {e.user for e in p.stage2} == evaluated or "pooled" in c.stage2.examples
  golds = {(q.input, q.gold) for q in p.eval_qs}
  eval_ids = {q.id for q in p.eval_qs}
  for e in p.stage1 + p.stage2:
    assert (e.input, e.target) not in golds, (e.id, e.target)
    assert e.id not in eval_ids and e.id.rpartition("/")[2] not in eval_ids, e.id
  # Each stage-2 history holds the example's own user's earlier records only.
  days = {(q.user_id, r.id): r.day for q in p.eval_qs + p.stage1_qs for r in q.profile}
  for e in p.stage2:
    assert all(days[(e.user, h)] <= e.day for h in e.history)


def test_a_careless_union_of_profiles_would_leak_and_the_earliest_profile_does_not(tmp_path):
  """The fixture is built so that the test above can fail: the union of the evaluated users'
  profiles holds evaluated golds (a later dev question's profile holds the earlier one)."""
  folder = write_setting(str(tmp_path), "LaMP_2M", "time")
  c = _config_module(os.path.join(REPO, "configs", "lamp2.py")).get_config("time")
  c.data.folder = folder
  p = plan(c, str(tmp_path))
  eval_ids = {q.id for q in p.eval_qs}
  union = {r.id for q in p.eval_qs for r in q.profile}
  assert union & eval_ids  # a careless trainer would train on these
  assert not {e.id.rpartition("/")[2] for e in p.stage2} & eval_ids
  assert exm.earliest_profiles(p.eval_qs)["u0"][-1].id == "u0-3"


def test_held_out_users_get_no_examples_and_no_row(tmp_path):
  c = _config_module(os.path.join(REPO, "configs", "lamp2.py")).get_config("time")
  c.data.folder = write_setting(str(tmp_path / "data"), c.task, "time")
  c.stage2.holdout_users = 1
  p = plan(c, str(tmp_path))
  held = max({q.user_id for q in p.eval_qs})
  assert held not in p.users and all(e.user != held for e in p.stage2)
  assert {q.user_id for q in p.eval_qs} - {held} <= set(p.users)
  assert p.skips.counts["held_out_users"] == 1


def test_unpadded_layout_equals_the_padded_one(model_cache):
  """`unpad` runs norms, projections and MLP on the real slots alone: the loss, every gradient
  and the hidden states at real slots equal the padded computation's (groups of 1 and 2 rows),
  and too few slots (a group's last tokens dropped) changes them: the test can tell."""
  llm, _ = models.load("tiny-random")  # its own: the module's `tiny` has a LoRA attached
  d = llm.config.hidden_size
  _attach_trained_looking_lora(llm)
  model = PersonalizedLM(llm, Tapper(d, 3, 4, rngs=nnx.Rngs(3)))
  rng = np.random.default_rng(0)
  b, t, k = 4, 12, 3
  lengths = np.array([12, 5, 9, 7])  # right padding of 0, 7, 3, 5 slots
  batch = {"input_ids": jnp.asarray(rng.integers(0, 100, (b, t)), jnp.int32),
           "attention_mask": jnp.asarray(np.arange(t)[None] < lengths[:, None], jnp.int32),
           "target_pos": jnp.asarray(lengths[:, None] - k + np.arange(k)[None], jnp.int32),
           "target_valid": jnp.ones((b, k), jnp.int32),
           "user_row": jnp.array([0, 1, -1, 3], jnp.int32),
           "query_z": jnp.asarray(rng.normal(size=(b, d)), jnp.float32),
           "hist_z": jnp.asarray(rng.normal(size=(b, 8, d)), jnp.float32),
           "hist_age": jnp.asarray(rng.uniform(0, 9, size=(b, 8)), jnp.float32),
           "hist_valid": jnp.arange(8)[None, :] < jnp.array([[5], [2], [8], [1]])}
  # Trainable: the LoRA and the prefix module (whose gradient crosses the unpadded layout).
  graphdef, lora, frozen = nnx.split(model, nnx.Any(nnx.LoRAParam, nnx.PathContains("tapper")),
                                     ...)
  assert any("tapper" in str(p) for p, _ in jax.tree_util.tree_leaves_with_path(lora))

  def loss(lora, extra):
    return lm_loss(nnx.merge(graphdef, lora, frozen), {**batch, **extra})[0]

  ref, ref_grads = jax.value_and_grad(loss)(lora, {})
  emb, mask = model.inputs(batch)
  ref_hidden = np.asarray(llm.hidden_states(inputs_embeds=emb, attention_mask=mask)[0])
  real = np.asarray(mask) > 0  # 3 prefix slots + the row's tokens
  # The batch gives N the tokens' room; lm_loss adds each row's 3 prefix slots.
  for groups, n in ((1, int(lengths.sum())), (2, 12 + 5)):  # groups of 17 and 16 tokens
    got, grads = jax.value_and_grad(loss)(lora, {"unpad": jnp.zeros((groups, n), jnp.int8)})
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)
    hidden = np.asarray(llm.hidden_states(inputs_embeds=emb, attention_mask=mask,
                                          unpad=(groups, n + b // groups * 3))[0])
    np.testing.assert_allclose(hidden[real], ref_hidden[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(hidden[~real], 0.0)
  short = loss(lora, {"unpad": jnp.zeros((1, int(lengths.sum()) - 2), jnp.int8)})
  assert abs(float(short) - float(ref)) > 1e-3
