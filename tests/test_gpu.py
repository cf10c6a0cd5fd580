"""Checks that need an NVIDIA GPU (skipped elsewhere): the fused cuDNN attention against our
einsum attention, forward and gradient, in bf16, on a random model of SmolLM2's layer shape."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


@pytest.mark.parametrize("side", ["left", "right"])
def test_cudnn_attention_matches_einsum_in_bf16(side):
  from flax import nnx
  from tapper_jax.models import LlamaConfig, LlamaForCausalLM
  from tapper_jax.models.registry import SHAPES
  shape = dict(SHAPES["smollm2-135m"], num_hidden_layers=4, vocab_size=4096)
  models = {a: LlamaForCausalLM(LlamaConfig(**shape, param_dtype="bfloat16", dtype="bfloat16",
                                            attention=a), rngs=nnx.Rngs(0))
            for a in ("einsum", "cudnn")}
  rng = np.random.default_rng(0)
  b, t = 4, 192
  ids = jnp.asarray(rng.integers(10, 4000, (b, t)), jnp.int32)
  mask = np.ones((b, t), np.int32)
  for i in range(b):
    pad = 17 * i
    if pad:
      mask[i, :pad] = 0 if side == "left" else 1
      if side == "right":
        mask[i, t - pad:] = 0
  mask = jnp.asarray(mask)
  real = np.asarray(mask) > 0

  def out(m, e):
    h, _ = m.hidden_states(inputs_embeds=e, attention_mask=mask)
    return h.astype(jnp.float32)

  emb = models["einsum"].embed(ids)
  h = {a: np.asarray(out(m, emb)) for a, m in models.items()}
  assert np.isfinite(h["cudnn"][real]).all()
  scale = np.abs(h["einsum"][real]).max()
  assert np.abs(h["cudnn"][real] - h["einsum"][real]).max() <= 0.03 * scale
  g = {a: np.asarray(jax.grad(lambda e: jnp.sum(jnp.where(mask[..., None] > 0, out(m, e), 0.0)
                                                 ** 2))(emb).astype(jnp.float32))
       for a, m in models.items()}
  assert np.isfinite(g["cudnn"][real]).all()
  gs = np.abs(g["einsum"][real]).max()
  assert np.abs(g["cudnn"][real] - g["einsum"][real]).max() <= 0.05 * gs
