"""The offline real-data tasks (HuffPost, MovieLens) built by `python -m tapper_jax.data.build_offline`.

  python -m tapper_jax.train --config=configs/offline.py:huffpost_2N --workdir=DIR \
      --config.data.folder=OFFLINE_DIR/huffpost_2N
Variants: huffpost_2N (news category), huffpost_4 (headline), movielens_3 (rating),
movielens_2M (movie tag); add ",tiny" (e.g. `offline.py:huffpost_2N,tiny`) for the CPU smoke size.
The folders are time-based: per user, the newest items are test questions, the next ones dev,
the rest train. Stage 1 pools the train questions; stage 2 trains on the evaluated users' own
profile records (their train questions are those same records, so they are not added twice).
Choose settings with data.eval_split="dev"; report with "test".
"""

from tapper_jax.training.defaults import base_config, tiny

TASKS = {  # variant -> (LaMP task, max_prompt_tokens, max_target_tokens, max_new_tokens)
    "huffpost_2N": ("LaMP_2N", 160, 8, 8),
    "huffpost_4": ("LaMP_4", 160, 32, 32),
    "movielens_3": ("LaMP_3", 96, 4, 4),
    "movielens_2M": ("LaMP_2M", 160, 8, 8),
}


def get_config(variant: str = "huffpost_2N"):
  name, _, size = variant.partition(",")
  if name not in TASKS:
    raise ValueError(f"offline variant {name!r}: choose from {sorted(TASKS)}")
  task, max_prompt, max_target, max_new = TASKS[name]
  c = base_config(task)
  c.data.source = "lamp"  # the offline folders are in official LaMP format (time-based)
  c.data.stage1_split = "train"
  c.data.eval_split = "test"
  c.stage2.examples = ("records",)
  c.max_prompt_tokens, c.max_target_tokens, c.max_new_tokens = max_prompt, max_target, max_new
  if size == "tiny":
    c = tiny(c)
    c.data.source = "lamp"  # keep the real files and prompts; only the model and steps shrink
    c.max_prompt_tokens, c.max_target_tokens = max_prompt, max_target
  return c
