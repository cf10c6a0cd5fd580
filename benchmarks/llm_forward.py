"""Prefill and cached-decode tokens/s: our Flax LLM against HF transformers PyTorch, same run.

Both sides load the same weights (our converted HF folder of the real SmolLM2-135M-Instruct),
run the same batch of left-padded prompts, and use their generation paths:
  prefill: prompt -> KV cache + next-token logits of the last position (HF: logits_to_keep=1)
  decode:  greedy, `--new_tokens` forced (HF: min_new_tokens), timed as generate - prefill
JAX runs on its default backend (the GPU on a GPU machine); PyTorch on the CPU.

  python benchmarks/llm_forward.py --batch=8 --prompt_len=128 --new_tokens=32 --out=bench_out
"""

import json
import os
import platform
import statistics
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Registry name or HF folder.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Prompt tokens (rows padded to this).")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Generated tokens per row.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Both sides.")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Time only our side (no peer: no ratio).")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for llm_forward.json.")


def _median_time(fn, repeats):
  fn()  # warm-up (compile for JAX)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _prompts(tok, batch, length):
  """Real text of mixed lengths, left-padded to `length` tokens."""
  import numpy as np
  base = ("Personalized language models adapt a frozen backbone to each user through a small "
          "learned state, while a shared component reads the user's history. ") * 40
  ids = tok.encode(base)
  seqs = [ids[: length - 9 * (i % 4)] for i in range(batch)]  # mixed lengths, some padding
  return tok.pad(seqs, side="left", length=length)


def bench_jax(folder, ids, mask, new_tokens, repeats, dtype):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from tapper_jax.models import greedy_generate, init_cache, load_pretrained
  model = load_pretrained(folder, param_dtype=dtype, dtype=dtype)
  graphdef, state = nnx.split(model)
  state = jax.device_put(state)
  ids_d, mask_d = jnp.asarray(ids), jnp.asarray(mask)
  b, p = ids.shape

  @jax.jit
  def prefill(state, ids, mask):
    m = nnx.merge(graphdef, state)
    cache = init_cache(m.config, b, p + new_tokens)
    kv = jnp.concatenate([mask, jnp.zeros((b, new_tokens), mask.dtype)], axis=1)
    pos = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    h, cache = m.hidden_states(ids, attention_mask=kv, positions=pos, cache=cache, cache_index=0)
    return m.logits(h[:, -1]), cache

  t_prefill = _median_time(lambda: jax.block_until_ready(prefill(state, ids_d, mask_d)), repeats)
  model = nnx.merge(graphdef, state)
  gen = lambda: jax.block_until_ready(
      greedy_generate(model, ids_d, mask_d, max_new_tokens=new_tokens, eos_ids=(-1,), pad_id=0))
  t_gen = _median_time(gen, repeats)
  return t_prefill, t_gen, str(jax.devices()[0].device_kind)


def bench_torch(folder, ids, mask, new_tokens, repeats, dtype):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count())
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = AutoModelForCausalLM.from_pretrained(folder, dtype=tdtype).eval()
  ids_t, mask_t = torch.tensor(ids).long(), torch.tensor(mask).long()
  pos = (mask_t.cumsum(-1) - 1).clamp(min=0)

  def prefill():
    with torch.inference_mode():
      model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos, use_cache=True,
            logits_to_keep=1)

  def gen():
    with torch.inference_mode():
      model.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

  return _median_time(prefill, repeats), _median_time(gen, repeats)


def main(argv):
  del argv
  from tapper_jax.models import Tokenizer, registry
  folder = registry.resolve(_MODEL.value)
  tok = Tokenizer.from_pretrained(folder)
  b, p, n = _BATCH.value, _PROMPT_LEN.value, _NEW.value
  ids, mask = _prompts(tok, b, p)
  real_prompt_tokens = int(mask.sum())
  jp, jg, device = bench_jax(folder, ids, mask, n, _REPEATS.value, _DTYPE.value)
  rows = {"jax": dict(prefill_s=jp, generate_s=jg, device=device)}
  if not _SKIP_TORCH.value:
    tp, tg = bench_torch(folder, ids, mask, n, _REPEATS.value, _DTYPE.value)
    rows["torch"] = dict(prefill_s=tp, generate_s=tg, device="cpu")
  for r in rows.values():
    r["prefill_tok_s"] = b * p / r["prefill_s"]
    # n - 1 decode steps follow the prefill (its logits give the first new token).
    r["decode_tok_s"] = b * (n - 1) / max(r["generate_s"] - r["prefill_s"], 1e-9)
  result = dict(benchmark="llm_forward", model=_MODEL.value, batch=b, prompt_len=p,
                real_prompt_tokens=real_prompt_tokens, new_tokens=n, dtype=_DTYPE.value,
                machine=f"{platform.machine()} {os.cpu_count()} cpus", rows=rows)
  print(f"\nllm_forward  {_MODEL.value}  batch={b} prompt={p} new={n} {_DTYPE.value}  "
        f"({result['machine']})")
  print(f"{'side':8}{'device':>10}{'prefill tok/s':>16}{'decode tok/s':>15}")
  for k, r in rows.items():
    print(f"{k:8}{r['device']:>10}{r['prefill_tok_s']:16.0f}{r['decode_tok_s']:15.1f}")
  if "torch" in rows:
    result["ratio_prefill"] = rows["jax"]["prefill_tok_s"] / rows["torch"]["prefill_tok_s"]
    result["ratio_decode"] = rows["jax"]["decode_tok_s"] / rows["torch"]["decode_tok_s"]
    print(f"{'ratio':8}{'jax/torch':>10}{result['ratio_prefill']:15.2f}x{result['ratio_decode']:14.2f}x")
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "llm_forward.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
