"""TAP-PER modules: temporal attention masking and ordering, the user prefix table, the bank."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tapper_jax.tapper import RecordBank, TemporalAttention, UserPrefixTable, embed_texts
from tapper_jax.tapper.model import Tapper

D, L = 16, 3


def _attn(lambda_init=0.0, seed=0):
  return TemporalAttention(D, L, lambda_init=lambda_init, rngs=nnx.Rngs(seed))


def _hist(b=2, h=5, seed=1):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (b, D)), jax.random.normal(k2, (b, h, D)),
          jnp.tile(jnp.arange(h, 0, -1, dtype=jnp.float32) * 3.0, (b, 1)),  # oldest first
          jnp.ones((b, h), bool))


def test_padding_and_newer_records_get_zero_weight():
  zq, hz, age, valid = _hist()
  valid = valid.at[0, 0].set(False)  # padding
  age = age.at[1, 3].set(0.0).at[1, 4].set(-2.0)  # same time as the query, and newer
  a = _attn(0.1).weights(zq, hz, age, valid)
  assert a[0, 0] == 0 and a[1, 3] == 0 and a[1, 4] == 0
  np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)
  assert (a[0, 1:] > 0).all() and (a[1, :3] > 0).all()
  # Changing what a masked slot holds changes nothing.
  hz2 = hz.at[0, 0].set(100.0).at[1, 4].set(-100.0)
  np.testing.assert_array_equal(_attn(0.1).weights(zq, hz2, age, valid), a)


def test_no_usable_history_gives_zero_weights_and_the_bias_prefix():
  zq, hz, age, valid = _hist()
  attn = _attn(0.1)
  p, a = attn(zq, hz, -age, valid)  # everything newer than the query
  assert not np.isnan(np.asarray(p)).any()
  np.testing.assert_array_equal(a, 0.0)
  np.testing.assert_allclose(p, jnp.broadcast_to(attn.proj.bias[...].reshape(L, D), p.shape))


def test_an_older_copy_gets_less_weight_than_a_newer_identical_one():
  zq, hz, age, valid = _hist(b=1, h=4)
  hz = hz.at[0, 0].set(hz[0, 2])  # slot 0 (older) and slot 2 (newer) hold the same record
  for lt, lo in ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
    attn = _attn()
    attn.lambda_t[...] = lt
    attn.lambda_o[...] = lo
    a = attn.weights(zq, hz, age, valid)
    assert a[0, 0] < a[0, 2], (lt, lo)
  attn = _attn()  # lambdas = 0: identical records tie
  a = attn.weights(zq, hz, age, valid)
  np.testing.assert_allclose(a[0, 0], a[0, 2], rtol=1e-6)


def test_rank_gap_counts_only_usable_records():
  zq, hz, age, valid = _hist(b=1, h=4)
  attn = _attn()
  attn.lambda_o[...] = 1.0
  hz = jnp.broadcast_to(hz[:, :1], hz.shape)  # identical records: weights follow the gaps only
  a = attn.weights(zq, hz, age.at[0, 3].set(-1.0), valid)  # slot 3 is newer: masked
  gaps = np.array([2.0, 1.0, 0.0])  # slot 2 is now the newest usable one
  w = np.exp(-np.log1p(gaps))
  np.testing.assert_allclose(a[0, :3], w / w.sum(), rtol=1e-5)


def test_gradients_reach_both_lambdas():
  zq, hz, age, valid = _hist()
  attn = _attn(0.1)
  graphdef, params = nnx.split(attn, nnx.Param)

  def loss(p):
    out, _ = nnx.merge(graphdef, p)(zq, hz, age, valid)
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
  p_q, _ = tapper.attention(zq, hz, age, valid)
  np.testing.assert_allclose(prefix[1], p_q[1], rtol=1e-6)  # unknown user: P_q alone
  np.testing.assert_allclose(prefix[0], p_q[0] + table[1], rtol=1e-6)
  assert np.abs(np.asarray(p_q[1])).sum() > 0


class _Tok:
  def encode_batch(self, texts):
    return [[ord(c) % 7 for c in t] for t in texts]


def test_bank_embeds_first_tokens_sorts_by_day_and_finds_older_history():
  emb = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
  z = embed_texts(["abc", "", "a" * 300], _Tok(), emb, max_tokens=128)
  np.testing.assert_allclose(z[0], emb[[97 % 7, 98 % 7, 99 % 7]].mean(0))
  np.testing.assert_array_equal(z[1], 0.0)
  np.testing.assert_allclose(z[2], emb[97 % 7])
  bank = RecordBank.build({"u": [("r3", "c", 30.0), ("r1", "a", 10.0), ("r2", "b", 20.0),
                                 ("r1", "a", 10.0)]}, _Tok(), emb)
  assert bank.z.shape == (3, 2) and list(bank.day) == [10.0, 20.0, 30.0]
  assert bank.history("u", 30.0, 8).tolist() == [0, 1]  # strictly older only
  assert bank.history("u", 31.0, 2).tolist() == [1, 2]  # newest two
  assert bank.history("nobody", 31.0, 8).tolist() == []
  g = bank.gather([bank.history("u", 25.0, 4)], [25.0], 4)
  assert g["hist_valid"].tolist() == [[True, True, False, False]]
  np.testing.assert_allclose(g["hist_age"][0, :2], [15.0, 5.0])


def test_lora_dropout_mask_rate_and_determinism():
  from tapper_jax.models.llama import dropout_keep
  keep, p = dropout_keep(jax.random.PRNGKey(3), 0.05, (64, 257))
  assert keep.shape == (64, 257) and abs(p - 0.95) < 1e-4
  assert abs(float(keep.mean()) - p) < 0.01  # 16448 draws: 3 sigma is ~0.005
  again, _ = dropout_keep(jax.random.PRNGKey(3), 0.05, (64, 257))
  np.testing.assert_array_equal(keep, again)
  other, _ = dropout_keep(jax.random.PRNGKey(4), 0.05, (64, 257))
  assert not np.array_equal(keep, other)
