"""Greedy generation with a frozen LLM: `python -m tapper_jax.generate --prompt="..."`.

Thin absl entry point; the logic is `tapper_jax.models.load` + `greedy_generate`.
"""

import json
import os
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Registry name or HF folder.")
_PROMPT = flags.DEFINE_multi_string("prompt", ["What is the capital of France?"],
                                    "User message(s); several make one padded batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Param and compute dtype.")
_WORKDIR = flags.DEFINE_string("workdir", None, "If set, writes generations.json here.")


def run(model_name: str, prompts: list[str], max_new_tokens: int, dtype: str = "float32"):
  import numpy as np
  from tapper_jax import models
  model, tok = models.load(model_name, param_dtype=dtype, dtype=dtype)
  texts = [tok.apply_chat_template([{"role": "user", "content": p}]) if tok.chat_template else p
           for p in prompts]
  ids, mask = tok.pad([tok.encode(t) for t in texts])
  start = time.perf_counter()
  out = np.asarray(models.greedy_generate(model, ids, mask, max_new_tokens=max_new_tokens))
  seconds = time.perf_counter() - start
  return [{"prompt": p, "completion": tok.decode(o)} for p, o in zip(prompts, out)], seconds


def main(argv):
  del argv
  results, seconds = run(_MODEL.value, _PROMPT.value, _MAX_NEW.value, _DTYPE.value)
  for r in results:
    print(f"> {r['prompt']}\n{r['completion']}\n")
  print(f"{len(results)} prompt(s), {_MAX_NEW.value} new tokens, {seconds:.1f} s (compile included)")
  if _WORKDIR.value:
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "generations.json"), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
  app.run(main)
