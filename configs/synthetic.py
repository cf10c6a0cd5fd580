"""The README demo: real SmolLM2-135M-Instruct on SYNTHETIC LaMP-2M-style data with preference drift.

  python -m tapper_jax.train --config=configs/synthetic.py --workdir=DIR
Sized for about 10 minutes on 2 CPU cores: stage 1 (task LoRA), stage 2 (TAP-PER), then the
non-personalized backbone against TAP-PER on each user's newest item.
`--config=configs/synthetic.py:tiny` swaps in a tiny random LLM (seconds; tests use it).
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_2M")
  c.data.source = "synthetic"  # written to DIR/data/synthetic_drift on first use
  c.data.eval_split = "test"  # each user's newest item
  c.data.synthetic.topical = 0.0  # descriptions carry no tag words: only a user's history tells
  c.stage2.examples = ("records",)  # each user's own items (the train questions are the same)
  c.max_prompt_tokens = 112  # the synthetic prompts are ~80 tokens (+ the chat template)
  c.max_target_tokens = 4  # a one-word tag + EOS
  c.max_new_tokens = 4
  c.stage1.steps = 30
  c.stage1.learning_rate = 1e-3  # few steps on CPU: a high LoRA rate
  c.stage2.steps = 60
  c.stage2.learning_rate = 1e-3
  c.stage2.table_learning_rate = 1e-2
  c.checkpoint_every = 30
  c.log_every = 5
  return tiny(c) if variant == "tiny" else c
