"""Checks that need an NVIDIA GPU (skipped elsewhere): the fused cuDNN attention against our
einsum attention in bf16, each measured against the same model in fp32 (einsum), forward and
gradient, on a random model of SmolLM2's layer shape. cuDNN's flash attention has no fp32 mode,
so the test asks that its bf16 error be of the size of our own bf16 path's error."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


@pytest.mark.parametrize("side", ["left", "right"])
def test_cudnn_attention_error_is_bf16_sized(side):
  from flax import nnx
  from tapper_jax.models import LlamaConfig, LlamaForCausalLM
  from tapper_jax.models.registry import SHAPES
  shape = dict(SHAPES["smollm2-135m"], num_hidden_layers=2, vocab_size=4096)
  setups = {"fp32": ("float32", "einsum"), "bf16": ("bfloat16", "einsum"),
            "cudnn": ("bfloat16", "cudnn")}
  models = {k: LlamaForCausalLM(LlamaConfig(**shape, param_dtype="float32", dtype=d, attention=a),
                                rngs=nnx.Rngs(0)) for k, (d, a) in setups.items()}
  rng = np.random.default_rng(0)
  b, t = 4, 192
  ids = jnp.asarray(rng.integers(10, 4000, (b, t)), jnp.int32)
  mask = np.ones((b, t), np.int32)
  for i in range(1, b):
    if side == "left":
      mask[i, : 17 * i] = 0
    else:
      mask[i, t - 17 * i:] = 0
  real = mask > 0
  mask = jnp.asarray(mask)
  emb = models["fp32"].embed(ids)
  cot = jnp.asarray(rng.normal(size=(b, t, shape["hidden_size"])), jnp.float32) * mask[..., None]

  def loss(m, e):  # a fixed linear read-out of the real rows: its gradient is plain backprop
    h, _ = m.hidden_states(inputs_embeds=e, attention_mask=mask)
    return jnp.sum(h.astype(jnp.float32) * cot)

  fwd = {k: np.asarray(m.hidden_states(inputs_embeds=emb, attention_mask=mask)[0], np.float32)
         for k, m in models.items()}
  grad = {k: np.asarray(jax.grad(lambda e: loss(m, e))(emb), np.float32) for k, m in models.items()}
  for name, got in (("forward", fwd), ("gradient", grad)):
    ref = got["fp32"][real]
    err = {k: np.abs(got[k][real] - ref).max() / np.abs(ref).max() for k in ("bf16", "cudnn")}
    assert np.isfinite(got["cudnn"][real]).all(), name
    assert err["cudnn"] <= 2 * err["bf16"] + 1e-3, (name, err)
