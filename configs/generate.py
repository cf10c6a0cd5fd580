"""Greedy generation with the frozen LLM (the main job until TAP-PER training lands).

  python -m tapper_jax.generate --config=configs/generate.py --workdir=workdir/generate \
      --config.max_new_tokens=64
  `--config=configs/generate.py:tiny` is the CPU smoke variant.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "smollm2-135m-instruct"  # registry name or a local Hugging Face folder
  c.prompts = ("What is the capital of France?",
               "Name three primary colors.")  # user messages, one padded batch
  c.chat_template = True  # wrap each prompt in the tokenizer's chat template when it has one
  c.max_new_tokens = 32  # fixed generation length (one compile per prompt length)
  c.param_dtype = "float32"  # storage dtype of the weights: float32 | bfloat16
  c.dtype = "float32"  # matmul/activation dtype: float32 | bfloat16
  if variant == "tiny":
    c.prompts = ("What is the capital of France?",)
    c.max_new_tokens = 8
  return c
