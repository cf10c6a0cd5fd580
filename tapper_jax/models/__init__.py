"""The frozen LLM: Flax Llama family, LoRA, weights (HF safetensors, GGUF), tokenizer, registry."""

from tapper_jax.models.config import ConfigError, LlamaConfig
from tapper_jax.models.generate import greedy_generate
from tapper_jax.models.llama import LlamaForCausalLM, init_cache
from tapper_jax.models.tokenizer import Tokenizer, TokenizerError
from tapper_jax.models.weights import WeightsError, load_pretrained, save_pretrained


def load(name_or_path: str, *, param_dtype: str = "float32", dtype: str = "float32"):
  """(model, tokenizer) from a registry name (e.g. 'smollm2-135m-instruct') or an HF folder."""
  from tapper_jax.models import registry
  folder = registry.resolve(name_or_path)
  return load_pretrained(folder, param_dtype=param_dtype, dtype=dtype), Tokenizer.from_pretrained(folder)
