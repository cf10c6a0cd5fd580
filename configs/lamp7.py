"""Tweet paraphrasing (LaMP-7), official files.

  python -m tapper_jax.train --config=configs/lamp7.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp7.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_7")
  c.data.source = "lamp"
  c.stage2.examples = "questions"  # LaMP-7 records (tweets) make no prompt of their own
  c.max_target_tokens = 48  # a tweet
  c.max_new_tokens = 48
  c.stage2.learning_rate = 5e-5
  return tiny(c) if variant == "tiny" else c
