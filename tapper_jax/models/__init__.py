"""The frozen LLM: Flax Llama family, LoRA, weights (HF safetensors, GGUF), tokenizer, registry."""

from tapper_jax.models.config import ConfigError, LlamaConfig
from tapper_jax.models.generate import greedy_generate
from tapper_jax.models.llama import LlamaForCausalLM, init_cache
from tapper_jax.models.tokenizer import Tokenizer, TokenizerError
from tapper_jax.models.weights import WeightsError, load_pretrained, save_pretrained

# "tiny-random": SmolLM2's tokenizer and vocabulary with a 2-layer, 64-wide random Llama, for CPU
# smoke runs and tests of the training machinery (it learns, but knows no language).
TINY_RANDOM_BASE = "smollm2-135m-instruct"  # whose tokenizer and vocabulary it borrows
TINY_RANDOM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def load(name_or_path: str, *, param_dtype: str = "float32", dtype: str = "float32", seed: int = 0,
         attention: str = "einsum", scan_unroll: int = 1):
  """(model, tokenizer) from a registry name (e.g. 'smollm2-135m-instruct'), 'tiny-random',
  or an HF folder."""
  from flax import nnx
  from tapper_jax.models import registry
  if name_or_path == "tiny-random":
    folder = registry.resolve(TINY_RANDOM_BASE)
    cfg = LlamaConfig.from_pretrained(folder).replace(param_dtype=param_dtype, dtype=dtype,
                                                      attention=attention,
                                                      scan_unroll=scan_unroll, **TINY_RANDOM)
    return LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed)), Tokenizer.from_pretrained(folder)
  folder = registry.resolve(name_or_path)
  return (load_pretrained(folder, param_dtype=param_dtype, dtype=dtype, attention=attention,
                          scan_unroll=scan_unroll),
          Tokenizer.from_pretrained(folder))
