"""Row-wise (lazy) AdamW for the prefix table against dense AdamW (optax), on a hand-made loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tapper_jax.training.sparse_table import SparseTableAdamW

U, L, D = 40, 2, 3


def _loss(table, rows, target):
  """P_u as the model reads it (row -1: zeros), a squared error per example."""
  p = jnp.where((rows >= 0)[:, None, None], jnp.take(table, jnp.maximum(rows, 0), axis=0), 0.0)
  return jnp.sum((p - target) ** 2)


def _dense(table, batches, lr, wd, clip):
  tx = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(lr, weight_decay=wd))
  opt = tx.init(table)
  for rows, target in batches:
    g = jax.grad(_loss)(table, rows, target)
    upd, opt = tx.update(g, opt, table)
    table = optax.apply_updates(table, upd)
  return table


def _sparse(table, batches, lr, wd, clip):
  s = SparseTableAdamW(optax.constant_schedule(lr), wd, clip)
  state = s.init(table)
  for step, (rows, target) in enumerate(batches):
    mini, uniq, remapped = s.gather(table, rows)
    g = jax.grad(_loss)(mini, remapped, target)
    norm = optax.tree.norm(g)
    table, state = s.update(table, state, uniq, s.clipped(g, norm), jnp.asarray(step))
  return table, state


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_rows_in_every_batch_follow_dense_adamw_and_the_rest_never_move(wd):
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(0, 0.02, (U, L, D)), jnp.float32)
  rows = jnp.asarray([3, 7, 3, -1, 12, 7], jnp.int32)  # duplicates and an unknown user
  batches = [(rows, jnp.asarray(rng.normal(size=(6, L, D)), jnp.float32)) for _ in range(4)]
  for clip in (100.0, 0.05):  # the clip off, and biting
    dense = _dense(table, batches, 0.01, wd, clip)
    sparse, state = _sparse(table, batches, 0.01, wd, clip)
    touched = np.asarray([3, 7, 12])
    np.testing.assert_allclose(np.asarray(sparse)[touched], np.asarray(dense)[touched],
                               rtol=1e-5, atol=1e-7)
    rest = np.setdiff1d(np.arange(U), touched)
    np.testing.assert_array_equal(np.asarray(sparse)[rest], np.asarray(table)[rest])
    assert np.asarray(state["last"][...])[touched].tolist() == [4, 4, 4]
    assert not np.asarray(state["last"][...])[rest].any()


def test_a_row_left_out_stops_moving_and_catches_up_its_weight_decay():
  rng = np.random.default_rng(1)
  table = jnp.asarray(rng.normal(0, 0.02, (U, L, D)), jnp.float32)
  t = lambda n: jnp.asarray(rng.normal(size=(n, L, D)), jnp.float32)  # noqa: E731
  first = [(jnp.asarray([5, 9], jnp.int32), t(2))]
  later = [(jnp.asarray([9, 9], jnp.int32), t(2)) for _ in range(3)]
  after_one, _ = _sparse(table, first, 0.01, 0.1, 100.0)
  sparse, state = _sparse(table, first + later, 0.01, 0.1, 100.0)
  np.testing.assert_array_equal(np.asarray(sparse)[5], np.asarray(after_one)[5])  # frozen since
  dense = _dense(table, first + later, 0.01, 0.1, 100.0)
  assert np.abs(np.asarray(dense)[5] - np.asarray(after_one)[5]).max() > 1e-4  # dense drifts on
  # Row 5 comes back at step 5: the decay it missed (steps 2-4) is applied with this step's.
  back = first + later + [(jnp.asarray([5, 9], jnp.int32), jnp.zeros((2, L, D)))]
  got, _ = _sparse(table, back, 0.01, 0.1, 100.0)
  s = SparseTableAdamW(optax.constant_schedule(0.01), 0.1, 100.0)
  one, st = _sparse(table, first, 0.01, 0.1, 100.0)
  g = jax.grad(_loss)(jnp.take(one, jnp.asarray([5]), axis=0), jnp.asarray([0]),
                      jnp.zeros((1, L, D)))[0]
  m = 0.9 * st["m"][...][5] + 0.1 * g
  v = 0.999 * st["v"][...][5] + 0.001 * g * g
  want = np.asarray(one)[5] * (1 - 0.01 * 0.1) ** 4 - 0.01 * (m / (1 - 0.9 ** 5)) / (
      jnp.sqrt(v / (1 - 0.999 ** 5)) + 1e-8)
  np.testing.assert_allclose(np.asarray(got)[5], np.asarray(want), rtol=1e-5, atol=1e-7)
  del s
