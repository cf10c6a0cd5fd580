"""Our Flax Llama family against Hugging Face PyTorch on tiny random configs (fp32, 1e-4)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax
import jax.numpy as jnp

from hf_tiny import CONFIGS, batch, make_hf
from tapper_jax.models import greedy_generate, load_pretrained, save_pretrained
from tapper_jax.models.lora import attach_lora, merge_lora

TOL = 1e-4  # fp32 max abs logit difference; fixed, never loosened


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  hf = make_hf(request.param, folder)
  return hf, load_pretrained(folder), folder


def _hf_logits(hf, ids, mask):
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              position_ids=torch.tensor(pos)).logits.numpy()


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_hf(pair, side):
  hf, ours, _ = pair
  ids, mask = batch(side=side)
  ref = _hf_logits(hf, ids, mask)
  got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  assert got.shape == ref.shape
  diff = np.abs(ref - got)[mask > 0].max()
  assert diff <= TOL, diff


def test_embeddings_forward_equals_ids_forward(pair):
  _, ours, _ = pair
  ids, mask = batch()
  from_ids = ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0]
  from_emb = ours(inputs_embeds=ours.embed(jnp.asarray(ids)), attention_mask=jnp.asarray(mask))[0]
  np.testing.assert_array_equal(np.asarray(from_ids), np.asarray(from_emb))


def test_greedy_matches_hf_generate(pair):
  hf, ours, _ = pair
  ids, mask = batch(seed=1, side="left")
  n = 20
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      max_new_tokens=n, do_sample=False, pad_token_id=0,
                      eos_token_id=2).numpy()[:, ids.shape[1]:]
  got = np.asarray(greedy_generate(ours, ids, mask, max_new_tokens=n, eos_ids=(2,), pad_id=0))
  assert got.shape == (ids.shape[0], n)
  # HF stops once every row has finished; the rest of ours must then be padding.
  np.testing.assert_array_equal(got[:, :ref.shape[1]], ref)
  assert (got[:, ref.shape[1]:] == 0).all()


def test_kv_cache_decode_matches_full_forward(pair):
  """Prefill a prefix into the cache, decode the rest one token at a time."""
  from tapper_jax.models import init_cache
  _, ours, _ = pair
  ids, mask = batch(seed=2, side="left")
  full = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  b, t = ids.shape
  p = t - 4
  cache = init_cache(ours.config, b, t)
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  kv = np.zeros((b, t), np.int64)
  kv[:, :p] = mask[:, :p]
  logits, cache = ours(jnp.asarray(ids[:, :p]), attention_mask=jnp.asarray(kv),
                       positions=jnp.asarray(pos[:, :p]), cache=cache, cache_index=0)
  steps = [np.asarray(logits)]
  for i in range(p, t):
    kv[:, i] = 1
    logits, cache = ours(jnp.asarray(ids[:, i:i + 1]), attention_mask=jnp.asarray(kv),
                         positions=jnp.asarray(pos[:, i:i + 1]), cache=cache, cache_index=i)
    steps.append(np.asarray(logits))
  inc = np.concatenate(steps, axis=1)
  assert np.abs(inc - full)[mask > 0].max() <= TOL


def test_save_pretrained_round_trips_to_hf(pair, tmp_path):
  from transformers import AutoModelForCausalLM
  hf, ours, _ = pair
  out = str(tmp_path / "export")
  save_pretrained(ours, out)
  back = AutoModelForCausalLM.from_pretrained(out).eval()
  ids, mask = batch(seed=3)
  diff = np.abs(_hf_logits(back, ids, mask) - _hf_logits(hf, ids, mask))[mask > 0].max()
  assert diff <= TOL
  with pytest.raises(FileExistsError):
    save_pretrained(ours, out)  # never overwrite


def test_lora_attach_is_identity_and_merge_preserves_output(pair):
  _, _, folder = pair
  model = load_pretrained(folder)
  ids, mask = batch(seed=4)
  base = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  attach_lora(model, rank=4, alpha=8, key=jax.random.key(0))
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0]),
                             base, atol=1e-6)
  for mod in (model.model.layers.self_attn.q_proj, model.model.layers.self_attn.v_proj):
    mod.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(1), mod.lora_b.get_value().shape))
  adapted = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  assert np.abs(adapted - base).max() > 1e-3  # the adapter does something
  assert merge_lora(model) == 4
  merged = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  assert np.abs(merged - adapted)[mask > 0].max() <= TOL


def test_bf16_compute_runs_close_to_fp32(pair):
  _, ours, folder = pair
  bf = load_pretrained(folder, param_dtype="bfloat16", dtype="bfloat16")
  ids, mask = batch()
  a = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  b, _ = bf(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert b.dtype == jnp.bfloat16
  # bf16 has 8 mantissa bits; logits here are O(1): agree to a few hundredths.
  assert np.abs(np.asarray(b, np.float32) - a)[mask > 0].max() < 0.1


@pytest.mark.parametrize("num_beams", [1, 3])
def test_beam_search_matches_hf_generate(pair, num_beams):
  from tapper_jax.models.generate import beam_search
  hf, ours, _ = pair
  for seed in (4, 5):
    ids, mask = batch(seed=seed, side="left")
    n = 12
    with torch.no_grad():
      ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        max_new_tokens=n, do_sample=False, num_beams=num_beams,
                        pad_token_id=0, eos_token_id=2).numpy()[:, ids.shape[1]:]
    got = beam_search(ours, ids, mask, num_beams=num_beams, max_new_tokens=n, eos_ids=(2,),
                      pad_id=0)
    assert got.shape == (ids.shape[0], n)
    np.testing.assert_array_equal(got[:, :ref.shape[1]], ref)
    assert (got[:, ref.shape[1]:] == 0).all()
    # An EOS the model actually produces (row 0's third token): beams finish early, and the
    # length-penalised comparison of finished against running beams decides.
    first = ref
    for eos in dict.fromkeys(int(x) for x in first[:, 1:].T.reshape(-1)):
      with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          max_new_tokens=n, do_sample=False, num_beams=num_beams,
                          pad_token_id=0, eos_token_id=eos).numpy()[:, ids.shape[1]:]
      if (ref == eos).any():  # some returned beam ended at this EOS (in most configs one does)
        break
    got = beam_search(ours, ids, mask, num_beams=num_beams, max_new_tokens=n, eos_ids=(eos,),
                      pad_id=0)
    for r, g in zip(ref, got):  # HF fills after EOS with EOS when pad_token_id is 0 ("0 or eos")
      end = int(np.argmax(r == eos)) + 1 if (r == eos).any() else len(r)
      np.testing.assert_array_equal(g[:end], r[:end])
      assert (g[end:] == 0).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_attention_option_matches_hf(pair, side):
  """attention="xla" (jax.nn.dot_product_attention, the path "cudnn" takes on a GPU) against HF,
  real positions, both paddings; and its gradient against the einsum path's."""
  hf, _, folder = pair
  fused = load_pretrained(folder, attention="xla")
  ids, mask = batch(side=side)
  ref = _hf_logits(hf, ids, mask)
  got = np.asarray(fused(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  assert np.abs(ref - got)[mask > 0].max() <= TOL

  emb_grad = lambda m: jax.grad(lambda e: loss_from_embeds(m, e))(m.embed(jnp.asarray(ids)))

  def loss_from_embeds(model, e):
    logits = model(inputs_embeds=e, attention_mask=jnp.asarray(mask))[0]
    return jnp.sum(jnp.where(jnp.asarray(mask)[..., None] > 0, logits, 0.0) ** 2) * 1e-3

  g_fused, g_einsum = emb_grad(fused), emb_grad(load_pretrained(folder))
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(g_fused)[real], np.asarray(g_einsum)[real],
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="attention must be"):
    load_pretrained(folder, attention="flash")
