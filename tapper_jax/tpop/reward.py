"""T-POP's per-user reward model and dueling-bandit state.

r(e) = w2 . gelu(W1 e + b1) + b2 on a sentence embedding e [E] (E -> H -> 1, H = 1024). It is
fitted to a user's pairwise preferences with the Bradley-Terry (logistic) loss on the score
margin: P(a preferred to b) = sigmoid(r(e_a) - r(e_b)), loss -log sigmoid(r(winner) - r(loser)),
plus, with `reg` > 0, the neural dueling bandit's (reg / 2) ||theta - theta_0||^2 (theta_0 the
initial parameters). Without it a few dozen separable preferences drive |r| to ~10 and more:
sigmoid(r) saturates and stops telling candidates apart.

Exploration (neural-linear UCB): the gradient of r with respect to its last layer is
g(e) = [gelu(W1 e + b1), 1]. V = lam I + sum over preferences of (g_a - g_b)(g_a - g_b)^T, kept
diagonal; the bonus of a candidate is nu sqrt(d^T V^-1 d), d = g(candidate) - g(reference).
V grows as preferences arrive, so the bonus of a fixed candidate shrinks.

Two switches reproduce what the public PyTorch code appears to do, to measure their effect:
`official_sign` fits the flipped label (its judge returns 0 when A wins, then it pushes
s1 > s2 when the label is 1), and `official_covariance` adds the squared gradients to V^-1
itself (so exploration grows with data instead of shrinking).

Shapes: N items, E embedding width, H hidden width, P preferences.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_params(key, embed_dim: int, hidden: int = 1024) -> dict:
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (embed_dim, hidden)) / np.sqrt(embed_dim),
          "b1": jnp.zeros((hidden,)),
          "w2": jax.random.normal(k2, (hidden,)) / np.sqrt(hidden),
          "b2": jnp.zeros(())}


def features(params, e):
  """g(e) [..., H+1]: the gradient of r with respect to (w2, b2), i.e. [gelu(W1 e + b1), 1]."""
  h = jax.nn.gelu(e @ params["w1"] + params["b1"], approximate=False)
  return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)


def reward(params, e):
  """r(e) [...] for embeddings e [..., E]."""
  g = features(params, e)
  return g[..., :-1] @ params["w2"] + params["b2"]


def bonus(params, candidates, reference, v_inv):
  """sqrt(d^T V^-1 d) [N], d = g(candidate) - g(reference); candidates [N,E], reference [E],
  v_inv [H+1] (the diagonal of V^-1)."""
  d = features(params, candidates) - features(params, reference)[None]
  return jnp.sqrt(jnp.sum(d * d * v_inv, axis=-1))


def objective(params, init, winners, losers, weights, reg):
  """The refit's loss: (sum_i weights_i BT_i + (reg / 2) ||params - init||^2) / sum_i weights_i,
  BT_i = -log sigmoid(r(winner_i) - r(loser_i)) (weight 0: padding)."""
  margin = reward(params, winners) - reward(params, losers)
  drift = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(init)))
  return (-jnp.sum(weights * jax.nn.log_sigmoid(margin)) + 0.5 * reg * drift) / jnp.maximum(
      jnp.sum(weights), 1.0)


@jax.jit
def _fit(params, init, winners, losers, weights, lr, reg):
  """200 Adam steps on `objective`."""
  tx = optax.adam(lr)
  loss = lambda p: objective(p, init, winners, losers, weights, reg)  # noqa: E731

  def step(carry, _):
    p, opt = carry
    g = jax.grad(loss)(p)
    upd, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, upd), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=200)
  return params


@dataclasses.dataclass
class UserRewardModel:
  """One user's preferences, reward MLP and bandit covariance (diagonal)."""
  embed_dim: int
  hidden: int = 1024
  lam: float = 1.0
  lr: float = 1e-3
  reg: float = 0.0  # (reg / 2) ||theta - theta_0||^2 in the refit (0: the plain BT fit)
  seed: int = 0
  official_sign: bool = False
  official_covariance: bool = False
  # Refit from the initial parameters each time (as the public code does), instead of from the
  # current ones. Either way the fit sees every preference so far.
  refit_from_init: bool = False

  def __post_init__(self):
    self.init = init_params(jax.random.PRNGKey(self.seed), self.embed_dim, self.hidden)
    self.params = self.init
    self.v_diag = np.full((self.hidden + 1,), self.lam, np.float32)  # V (or V^-1: official)
    self.winners: list[np.ndarray] = []
    self.losers: list[np.ndarray] = []

  # Preferences padded to a multiple of this: few compiled shapes of the refit.
  _BUCKET = 16

  def add(self, preferred: np.ndarray, other: np.ndarray) -> None:
    """One preference (embeddings [E]): the user preferred `preferred` to `other`."""
    win, lose = (other, preferred) if self.official_sign else (preferred, other)
    self.winners.append(np.asarray(win, np.float32))
    self.losers.append(np.asarray(lose, np.float32))
    d = np.asarray(features(self.params, jnp.asarray(preferred)) -
                   features(self.params, jnp.asarray(other)))
    # Correct: V += d d^T (its inverse shrinks). Official: the same sum is used as V^-1.
    self.v_diag = self.v_diag + d * d

  def refit(self) -> None:
    """Refits the reward MLP on all preferences (from its current parameters, or from its
    initial ones with `refit_from_init`)."""
    if not self.winners:
      return
    if self.refit_from_init:
      self.params = self.init
    n = len(self.winners)
    size = -(-n // self._BUCKET) * self._BUCKET
    pad = lambda xs: np.concatenate([np.stack(xs), np.zeros((size - n, self.embed_dim),  # noqa: E731
                                                            np.float32)])
    weights = (np.arange(size) < n).astype(np.float32)
    self.params = _fit(self.params, self.init, jnp.asarray(pad(self.winners)),
                       jnp.asarray(pad(self.losers)), jnp.asarray(weights), self.lr, self.reg)

  def v_inverse(self) -> np.ndarray:
    return self.v_diag if self.official_covariance else 1.0 / self.v_diag

  def bonus(self, candidates, reference) -> jax.Array:
    """nu-free exploration bonus sqrt(d^T V^-1 d) [N] for candidates [N, E] against reference [E]."""
    return bonus(self.params, candidates, reference, jnp.asarray(self.v_inverse()))

  def state(self) -> dict:
    """Everything needed to continue later (numpy)."""
    return {"params": jax.tree.map(np.asarray, self.params), "v_diag": self.v_diag,
            "winners": np.stack(self.winners) if self.winners else np.zeros((0, self.embed_dim)),
            "losers": np.stack(self.losers) if self.losers else np.zeros((0, self.embed_dim))}

  def load_state(self, s: dict) -> None:
    self.params = jax.tree.map(jnp.asarray, s["params"])
    self.v_diag = np.asarray(s["v_diag"], np.float32)
    self.winners = list(np.asarray(s["winners"], np.float32))
    self.losers = list(np.asarray(s["losers"], np.float32))
