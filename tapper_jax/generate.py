"""Greedy generation with a frozen LLM.

  python -m tapper_jax.generate --config=configs/generate.py --workdir=DIR [--config.field=value]

Thin absl entry point; the logic is `run(config)`: `models.load` + `greedy_generate`.
Writes DIR/generations.json.
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Generation config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where generations.json is written.", required=True)


def run(config) -> tuple[list[dict], float]:
  """Generations for config.prompts; returns (rows, seconds including compile)."""
  import numpy as np
  from tapper_jax import models
  model, tok = models.load(config.model, param_dtype=config.param_dtype, dtype=config.dtype)
  texts = [tok.apply_chat_template([{"role": "user", "content": p}])
           if config.chat_template and tok.chat_template else p for p in config.prompts]
  ids, mask = tok.pad([tok.encode(t) for t in texts])
  start = time.perf_counter()
  out = np.asarray(models.greedy_generate(model, ids, mask, max_new_tokens=config.max_new_tokens))
  seconds = time.perf_counter() - start
  return [{"prompt": p, "completion": tok.decode(o)} for p, o in zip(config.prompts, out)], seconds


def main(argv):
  del argv
  config = _CONFIG.value
  results, seconds = run(config)
  for r in results:
    print(f"> {r['prompt']}\n{r['completion']}\n")
  print(f"{len(results)} prompt(s), {config.max_new_tokens} new tokens, {seconds:.1f} s "
        "(compile included)")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "generations.json"), "w", encoding="utf-8") as f:
    json.dump({"config": config.to_dict(), "generations": results}, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
  app.run(main)
