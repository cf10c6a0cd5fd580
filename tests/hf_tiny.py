"""Tiny random Hugging Face models for parity tests (torch side)."""

import os

import numpy as np

CONFIGS = {
    # GQA, untied, a non-default rope_theta
    "llama_gqa_untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=False, rope_theta=5000.0),
    # MHA, tied embeddings
    "llama_tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                       tie_word_embeddings=True),
    # Qwen2: q/k/v bias, GQA
    "qwen2_bias": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=1,
                       tie_word_embeddings=False),
    # Llama 3: rope scaling, attention_bias on all four projections
    "llama3_scaled_bias": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2,
                               tie_word_embeddings=False, attention_bias=True,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 16}),
}


def make_hf(name: str, folder: str, seed: int = 0):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
  spec = dict(CONFIGS[name])
  mt = spec.pop("model_type")
  common = dict(vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  if mt == "qwen2":
    model = Qwen2ForCausalLM(Qwen2Config(**common, **spec))
  else:
    model = LlamaForCausalLM(LlamaConfig(**common, **spec))
  # Random init leaves biases at zero and norms at one: perturb them so parity means something.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if n.endswith("bias") or "norm" in n:
        p.add_(0.1 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(folder)
  return model


def batch(seed=0, b=3, t=13, vocab=101, side="left"):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, (b, t)).astype(np.int64)
  lengths = [t, t - 5, t - 9][:b]
  mask = np.zeros((b, t), np.int64)
  for i, n in enumerate(lengths):
    if side == "left":
      mask[i, t - n:] = 1
    else:
      mask[i, :n] = 1
  ids = np.where(mask > 0, ids, 0)
  return ids, mask
