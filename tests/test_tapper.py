"""TAP-PER modules: temporal attention masking and ordering, the user prefix table, the bank."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tapper_jax.tapper import RecordBank, TemporalAttention, UserPrefixTable, embed_texts
from tapper_jax.tapper.bank import mean_embedder
from tapper_jax.tapper.model import Tapper

D, L = 16, 3


def _attn(lam=None, seed=0, **kw):
  attn = TemporalAttention(D, L, rngs=nnx.Rngs(seed), **kw)
  if lam is not None:
    attn.lambda_t[...], attn.lambda_o[...] = lam
  return attn


def _hist(b=2, h=5, seed=1):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (b, D)), jax.random.normal(k2, (b, h, D)),
          jnp.tile(jnp.arange(h, 0, -1, dtype=jnp.float32) * 3.0, (b, 1)),  # oldest first
          jnp.ones((b, h), bool))


def _reference_weights(attn, zq, hz, age, valid):
  """The paper's softmax, written out per example with numpy: s_j = MLP(feats) -
  lambda_t log(1 + max(dt, 0)) - lambda_o log(1 + (n - j)), over the n real records."""
  w1, b1 = np.asarray(attn.score_in.kernel[...]), np.asarray(attn.score_in.bias[...])
  w2, b2 = np.asarray(attn.score_out.kernel[...]), np.asarray(attn.score_out.bias[...])
  lt, lo = float(attn.lambda_t[...]), float(attn.lambda_o[...])
  out = np.zeros(valid.shape, np.float64)
  for i in range(valid.shape[0]):
    n = int(np.asarray(valid[i]).sum())
    if n == 0:
      continue
    q, z = np.asarray(zq[i], np.float64), np.asarray(hz[i, :n], np.float64)
    feats = np.concatenate([np.broadcast_to(q, z.shape), z, q - z, q * z], axis=-1)
    s = (np.asarray(jax.nn.gelu(jnp.asarray(feats @ w1 + b1, jnp.float32), approximate=False))
         @ w2 + b2)[:, 0]
    s = s - lt * np.log1p(np.maximum(np.asarray(age[i, :n]), 0)) - lo * np.log1p(n - np.arange(n))
    e = np.exp(s - s.max())
    out[i, :n] = e / e.sum()
  return out


def test_weights_equal_a_hand_computed_softmax_with_floored_age_and_the_papers_order_gap():
  zq, hz, age, valid = _hist()
  age = age.at[1, 4].set(0.0).at[1, 3].set(-2.0)  # same day as the query, and a negative age
  valid = valid.at[0, 4].set(False)  # padding at the end (histories are left-aligned)
  attn = _attn((0.3, 0.7))
  a = np.asarray(attn.weights(zq, hz, age, valid))
  np.testing.assert_allclose(a, _reference_weights(attn, zq, hz, age, valid), rtol=2e-5,
                             atol=1e-7)
  assert a[0, 4] == 0 and (a[1] > 0).all()  # padding masked; same-day records are attended


def test_masked_slots_change_nothing():
  zq, hz, age, valid = _hist()
  valid = valid.at[0, 3:].set(False)
  a = _attn((0.1, 0.1)).weights(zq, hz, age, valid)
  np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)
  hz2 = hz.at[0, 3].set(100.0).at[0, 4].set(-100.0)
  age2 = age.at[0, 3:].set(-50.0)
  np.testing.assert_array_equal(_attn((0.1, 0.1)).weights(zq, hz2, age2, valid), a)


def test_no_history_gives_zero_weights_and_the_bias_prefix():
  zq, hz, age, valid = _hist()
  attn = _attn((0.1, 0.1))
  none = jnp.zeros_like(valid)
  p = attn(zq, hz, age, none)
  assert not np.isnan(np.asarray(p)).any()
  np.testing.assert_array_equal(attn.weights(zq, hz, age, none), 0.0)
  np.testing.assert_allclose(p, jnp.broadcast_to(attn.proj.bias[...].reshape(L, D), p.shape))
  # Never an exactly zero soft token at init, even with no row: an all-zero first token makes
  # SmolLM2's backward overflow (tests/test_smollm2.py::test_a_cold_user_with_no_history...).
  cold = Tapper(D, L, 4, rngs=nnx.Rngs(0))({"user_row": jnp.array([-1, -1]), "query_z": zq,
                                           "hist_z": hz, "hist_age": age, "hist_valid": none})
  assert (np.linalg.norm(np.asarray(cold), axis=-1) > 0.01).all()


def test_changing_the_query_changes_the_weights():
  zq, hz, age, valid = _hist()
  attn = _attn((0.0, 0.0))
  a = np.asarray(attn.weights(zq, hz, age, valid))
  b = np.asarray(attn.weights(zq + 1.0, hz, age, valid))
  assert np.abs(a - b).max() > 1e-4
  p, p2 = attn(zq, hz, age, valid), attn(zq + 1.0, hz, age, valid)
  assert np.abs(np.asarray(p - p2)).max() > 1e-5


def test_an_older_copy_gets_less_weight_than_a_newer_identical_one():
  zq, hz, age, valid = _hist(b=1, h=4)
  hz = hz.at[0, 0].set(hz[0, 2])  # slot 0 (older) and slot 2 (newer) hold the same record
  for lam in ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
    a = _attn(lam).weights(zq, hz, age, valid)
    assert a[0, 0] < a[0, 2], lam
  a = _attn((0.0, 0.0)).weights(zq, hz, age, valid)  # lambdas = 0: identical records tie
  np.testing.assert_allclose(a[0, 0], a[0, 2], rtol=1e-6)
  # A switched-off decay ignores its lambda.
  a = _attn((0.5, 0.5), time_decay=False, order_decay=False).weights(zq, hz, age, valid)
  np.testing.assert_allclose(a[0, 0], a[0, 2], rtol=1e-6)


def test_lambdas_start_at_n_0_002():
  vals = np.array([[float(_attn(seed=s).lambda_t[...]), float(_attn(seed=s).lambda_o[...])]
                   for s in range(200)])
  assert abs(vals.mean()) < 0.005 and 0.015 < vals.std() < 0.025
  assert (vals[:, 0] != vals[:, 1]).all()


def test_scorer_and_projection_start_as_pytorch_linear_layers():
  """The official code's MLP and projection are nn.Linear with PyTorch's default init: weight
  and bias uniform in +-1/sqrt(fan_in). Ours, per layer, against a torch draw of that shape."""
  torch = pytest.importorskip("torch")
  d, L = 96, 4
  att = TemporalAttention(d, L, rngs=nnx.Rngs(0))
  for dense, (fan_in, fan_out) in ((att.score_in, (4 * d, d)), (att.score_out, (d, 1)),
                                   (att.proj, (d, L * d))):
    torch.manual_seed(0)
    ref = torch.nn.Linear(fan_in, fan_out)
    for ours, theirs in ((dense.kernel[...], ref.weight), (dense.bias[...], ref.bias)):
      ours, theirs = np.asarray(ours), theirs.detach().numpy()
      assert ours.size == theirs.size
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
      if ours.size >= 96:  # enough draws to compare the spread
        np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.15)
        np.testing.assert_allclose(ours.std(), bound / np.sqrt(3), rtol=0.15)


def test_chunked_whole_history_attention_equals_the_unchunked_computation():
  """1,200 history slots in chunks of 64 (a streaming softmax) against the plain softmax."""
  b, h = 3, 1216
  k = jax.random.split(jax.random.PRNGKey(5), 3)
  zq, hz = jax.random.normal(k[0], (b, D)), jax.random.normal(k[1], (b, h, D))
  n = jnp.array([1200, 37, 0])  # histories of different lengths, one empty
  valid = jnp.arange(h)[None, :] < n[:, None]
  age = jnp.where(valid, (n[:, None] - jnp.arange(h)[None, :]) * 1.5, 0.0)
  attn = _attn((0.2, 0.3), chunk=64)
  ctx = attn.context(zq, hz, age, valid)
  ref = jnp.einsum("bh,bhd->bd", attn.weights(zq, hz, age, valid), hz)
  np.testing.assert_allclose(ctx, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(ctx[2], 0.0)

  # Gradients agree too (the streaming form is what training differentiates).
  graphdef, params = nnx.split(attn, nnx.Param)

  def loss(p, chunked):
    m = nnx.merge(graphdef, p)
    c = (m.context(zq, hz, age, valid) if chunked else
         jnp.einsum("bh,bhd->bd", m.weights(zq, hz, age, valid), hz))
    return jnp.sum(jnp.sin(c))

  g1, g2 = jax.grad(loss)(params, True), jax.grad(loss)(params, False)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6)


def test_standardized_z_is_the_module_on_hand_standardized_inputs_and_is_never_trained():
  """(z - z_center) * z_scale before everything: the weights equal the hand-computed softmax on
  standardized inputs and P_q the projection of their weighted sum; the statistics get no
  gradient (they are fixed, training/steps.py gives them a zero update)."""
  from tapper_jax.tapper.attention import standardize_stats
  zq, hz, age, valid = _hist()
  valid = valid.at[0, 4].set(False)
  bank = np.asarray(hz).reshape(-1, D) * 0.1 + 3.0  # a shared offset far larger than the spread
  center, scale = standardize_stats(bank)
  np.testing.assert_allclose(center, bank.mean(0), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm((bank - center) * scale, axis=1).mean(), 1.0, rtol=1e-5)
  zq, hz = zq * 0.1 + 3.0, hz * 0.1 + 3.0
  attn = _attn((0.3, 0.7))
  attn.z_center[...], attn.z_scale[...] = jnp.asarray(center), jnp.float32(scale)
  szq, shz = (zq - center) * scale, (hz - center) * scale
  ref = _reference_weights(attn, szq, shz, age, valid)
  np.testing.assert_allclose(attn.weights(zq, hz, age, valid), ref, rtol=2e-5, atol=1e-7)
  ctx = np.einsum("bh,bhd->bd", ref, np.asarray(shz, np.float64))
  want = (ctx @ np.asarray(attn.proj.kernel[...]) + np.asarray(attn.proj.bias[...])).reshape(-1, L, D)
  np.testing.assert_allclose(attn(zq, hz, age, valid), want, rtol=1e-4, atol=1e-5)
  # At (0, 1) the module is the paper's: raw z.
  plain = _attn((0.3, 0.7))
  np.testing.assert_allclose(plain.weights(zq, hz, age, valid),
                             _reference_weights(plain, zq, hz, age, valid), rtol=2e-5, atol=1e-7)
  graphdef, params = nnx.split(attn, nnx.Param)
  g = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(zq, hz, age, valid) ** 2))(params)
  assert not np.any(np.asarray(g["z_center"][...])) and float(g["z_scale"][...]) == 0.0
  assert np.abs(np.asarray(g["proj"]["kernel"][...])).sum() > 0
  with pytest.raises(ValueError, match="spread"):
    standardize_stats(np.ones((4, D)))


def test_gradients_reach_both_lambdas():
  zq, hz, age, valid = _hist()
  attn = _attn((0.1, 0.1))
  graphdef, params = nnx.split(attn, nnx.Param)

  def loss(p):
    out = nnx.merge(graphdef, p)(zq, hz, age, valid)
    return jnp.sum(out ** 2)

  g = jax.grad(loss)(params)
  assert abs(float(g["lambda_t"][...])) > 0 and abs(float(g["lambda_o"][...])) > 0
  assert np.abs(np.asarray(g["score_in"]["kernel"][...])).sum() > 0


def test_prefix_length_must_be_positive():
  with pytest.raises(ValueError, match="prefix length"):
    TemporalAttention(D, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="prefix length"):
    UserPrefixTable(4, -1, D, rngs=nnx.Rngs(0))


def test_cold_start_user_gets_zero_p_u_and_still_gets_p_q():
  tapper = Tapper(D, L, num_rows=3, rngs=nnx.Rngs(0))
  table = np.asarray(tapper.users.table[...])
  assert table.shape == (3, L, D) and 0.015 < table.std() < 0.025  # N(0, 0.02)
  zq, hz, age, valid = _hist()
  batch = {"query_z": zq, "hist_z": hz, "hist_age": age, "hist_valid": valid,
           "user_row": jnp.array([1, -1], jnp.int32)}
  prefix = tapper(batch)
  p_q = tapper.attention(zq, hz, age, valid)
  np.testing.assert_allclose(prefix[1], p_q[1], rtol=1e-6)  # unknown user: P_q alone
  np.testing.assert_allclose(prefix[0], p_q[0] + table[1], rtol=1e-6)
  assert np.abs(np.asarray(p_q[1])).sum() > 0


class _Tok:
  def encode_batch(self, texts):
    return [[ord(c) % 7 for c in t] for t in texts]


def test_bank_embeds_first_tokens_sorts_by_day_and_gathers_histories():
  emb = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
  z = embed_texts(["abc", "", "a" * 300], _Tok(), emb, max_tokens=128)
  np.testing.assert_allclose(z[0], emb[[97 % 7, 98 % 7, 99 % 7]].mean(0))
  np.testing.assert_array_equal(z[1], 0.0)
  np.testing.assert_allclose(z[2], emb[97 % 7])
  bank = RecordBank.build({"u": [("r3", "c", 30.0), ("r1", "a", 10.0), ("r2", "b", 20.0),
                                 ("r1", "a", 10.0)], "v": [("r1", "x", 5.0)]},
                          mean_embedder(_Tok(), emb))
  assert bank.z.shape == (4, 2) and list(bank.day) == [10.0, 20.0, 30.0, 5.0]
  assert bank.rows("u", ["r1", "r2"]).tolist() == [0, 1]
  assert bank.rows("v", ["r1"]).tolist() == [3]  # record ids are per user
  with pytest.raises(KeyError, match="not in the record bank"):
    bank.rows("v", ["r2"])
  g = bank.gather([bank.rows("u", ["r1", "r2"])], [25.0], 4)
  assert g["hist_valid"].tolist() == [[True, True, False, False]]
  np.testing.assert_allclose(g["hist_age"][0, :2], [15.0, 5.0])
  np.testing.assert_allclose(g["hist_z"][0, 1], bank.z[1])


def test_lora_dropout_mask_rate_and_determinism():
  from tapper_jax.models.llama import dropout_keep
  keep, p = dropout_keep(jax.random.PRNGKey(3), 0.05, (64, 257))
  assert keep.shape == (64, 257) and abs(p - 0.95) < 1e-4
  assert abs(float(keep.mean()) - p) < 0.01  # 16448 draws: 3 sigma is ~0.005
  again, _ = dropout_keep(jax.random.PRNGKey(3), 0.05, (64, 257))
  np.testing.assert_array_equal(keep, again)
  other, _ = dropout_keep(jax.random.PRNGKey(4), 0.05, (64, 257))
  assert not np.array_equal(keep, other)
