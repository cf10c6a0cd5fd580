"""PPlug: the aggregator and soft tokens against a hand computation, its masks, and a run of the
method through the shared harness (tiny random LLM, synthetic data, the real MiniLM encoder)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tapper_jax.methods.pplug import PersonaPlug

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


class _LLM:  # what PersonaPlug reads of the backbone: its input-embedding table
  def __init__(self, table):
    self.model = type("M", (), {})()
    self.model.embed_tokens = type("E", (), {})()
    self.model.embed_tokens.embedding = jnp.asarray(table)


def _gelu(x):
  from scipy.special import erf
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _batch(rng, b=3, h=6, e=5):
  q = rng.randn(b, e).astype(np.float32)
  z = rng.randn(b, h, e).astype(np.float32)
  age = np.abs(rng.randn(b, h)).astype(np.float32) * 10
  valid = np.ones((b, h), bool)
  valid[1, 4:] = False  # padding
  age[0, 2] = -3.0  # a record dated after the query
  valid[2] = False  # a user with no history
  return {"query_z": q, "hist_z": z, "hist_age": age, "hist_valid": valid,
          "user_row": np.full((b,), -1, np.int32)}


def _reference(module, batch, table):
  """Plain numpy: masked softmax of dot products, MLP, weighted sum, rescale to mean norm."""
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
  s = np.linalg.norm(table, axis=-1).mean()
  out = []
  for i in range(batch["query_z"].shape[0]):
    ok = batch["hist_valid"][i] & (batch["hist_age"][i] >= 0)
    logits = batch["hist_z"][i][ok] @ batch["query_z"][i]
    w = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum() if ok.any() else []
    hid = _gelu(batch["hist_z"][i][ok] @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
    proj = hid @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]
    persona = (np.asarray(w)[:, None] * proj).sum(0) if ok.any() else np.zeros(table.shape[1])
    n = np.linalg.norm(persona)
    persona = persona * s / n if n > 0 else persona
    inst = p["instruction"] * s / np.linalg.norm(p["instruction"])
    out.append(np.stack([inst, persona]))
  return np.stack(out)


def test_tokens_match_a_hand_computation_and_masks_hold():
  rng = np.random.RandomState(0)
  table = rng.randn(11, 8).astype(np.float32) * 3
  module = PersonaPlug(5, 8, rngs=nnx.Rngs(1))
  batch = _batch(rng)
  got = np.asarray(module(jax.tree.map(jnp.asarray, batch), _LLM(table)))
  np.testing.assert_allclose(got, _reference(module, batch, table), rtol=2e-5, atol=2e-5)
  s = np.linalg.norm(table, axis=-1).mean()
  np.testing.assert_allclose(np.linalg.norm(got[:2], axis=-1), s, rtol=1e-5)  # at the LLM's norm
  assert np.all(got[2, 1] == 0) and np.isfinite(got).all()  # no history: a zero persona, no NaN
  w = np.asarray(module.weights(*(jnp.asarray(batch[k]) for k in
                                  ("query_z", "hist_z", "hist_age", "hist_valid"))))
  assert w[0, 2] == 0 and np.all(w[1, 4:] == 0) and np.all(w[2] == 0)  # future, padding, none
  np.testing.assert_allclose(w[:2].sum(-1), 1.0, rtol=1e-6)
  # The query steers the weights.
  moved = dict(batch, query_z=batch["query_z"] + rng.randn(*batch["query_z"].shape))
  w2 = np.asarray(module.weights(*(jnp.asarray(moved[k]) for k in
                                   ("query_z", "hist_z", "hist_age", "hist_valid"))))
  assert np.abs(w2[:2] - w[:2]).max() > 1e-2


def test_no_per_user_parameters_a_new_user_needs_only_embeddings():
  rng = np.random.RandomState(2)
  table = rng.randn(11, 8).astype(np.float32)
  module = PersonaPlug(5, 8, rngs=nnx.Rngs(0))
  sizes = [v.shape for v in jax.tree.leaves(nnx.state(module, nnx.Param))]
  assert sorted(sizes) == sorted([(5, 8), (8,), (8, 8), (8,), (8,)])  # MLP + instruction only
  batch = jax.tree.map(jnp.asarray, _batch(rng))
  known = module(batch, _LLM(table))
  unseen = module(dict(batch, user_row=jnp.full((3,), 12345, jnp.int32)), _LLM(table))
  np.testing.assert_array_equal(np.asarray(known), np.asarray(unseen))
  assert np.linalg.norm(np.asarray(known)[0, 1]) > 0  # a persona from the history alone


def test_gradients_reach_the_projector_and_the_instruction_token_without_nan():
  rng = np.random.RandomState(3)
  table = rng.randn(11, 8).astype(np.float32)
  module = PersonaPlug(5, 8, rngs=nnx.Rngs(0))
  batch = jax.tree.map(jnp.asarray, _batch(rng))
  target = jnp.asarray(rng.randn(3, 2, 8), jnp.float32)
  g = nnx.grad(lambda m: jnp.sum((m(batch, _LLM(table)) - target) ** 2))(module)
  leaves = jax.tree.leaves(nnx.state(g, nnx.Param))
  assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
  assert all(np.abs(np.asarray(x)).max() > 0 for x in leaves)


@pytest.mark.slow  # over a minute on 2 cores: the default suite stays under 15
def test_pplug_trains_and_evaluates_through_the_harness(model_cache, tmp_path):
  from tapper_jax.models import registry
  try:
    registry.encoder_folder("all-minilm-l6-v2")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  import pplug as pplug_config
  from tapper_jax.training.loop import train_and_evaluate
  c = pplug_config.get_config("synthetic:tiny")
  c.progress = False
  c.eval_controls = ("no_personal", "other_user")
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  s2 = summary["stages"]["2"]
  assert s2["users"] == 0 and s2["kinds"] == ["pooled"]  # no table, pooled questions
  assert s2["bank_records"] > 0 and s2["history_slots"] >= 8
  assert {"PPlug", "PPlug, no personal input", "PPlug, another user's input"} <= set(
      summary["eval"])
  for path in summary["predictions"].values():
    with open(path, encoding="utf-8") as f:
      assert json.load(f)["golds"]
  assert summary["config"]["stage2"]["bridge_lora"] is False
