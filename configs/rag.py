"""Retrieval-augmented prompting (the LaMP RAG baselines) on any task config.

  python -m tapper_jax.train --config=configs/rag.py:huffpost_2N:bm25,4 --workdir=DIR \
      --config.data.folder=OFFLINE_DIR/huffpost_2N
  python -m tapper_jax.train --config=configs/rag.py:lamp2:time:recency,1,zeroshot ...
The argument is TASK:RETRIEVER,K[,zeroshot]. TASK is an offline variant (configs/offline.py) or
a configs/*.py module with its own argument (`lamp2:oppu`); RETRIEVER is bm25, recency or
dense; `zeroshot` trains nothing (the stage-1 backbone is evaluated on the retrieval-augmented
prompts), otherwise the bridge LoRA trains on them. What RAG changes is
`defaults.METHOD_DEFAULTS["rag"]`.
"""

import os

from tapper_jax.training.defaults import task_config, with_method


def get_config(arg: str = "huffpost_2N:bm25,4"):
  task, _, spec = arg.rpartition(":")
  retriever, *rest = spec.split(",")
  k = int(rest[0]) if rest else 4
  zeroshot = "zeroshot" in rest[1:]
  c = with_method(task_config(task or "huffpost_2N", os.path.dirname(os.path.abspath(__file__))),
                  "rag")
  c.rag.retriever, c.rag.k = retriever, k
  c.stage2.bridge_lora = not zeroshot
  c.name = f"RAG {retriever} k={k}" + (", zero-shot" if zeroshot else ", trained")
  return c
