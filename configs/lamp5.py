"""Scholarly title generation (LaMP-5), official files.

  python -m tapper_jax.train --config=configs/lamp5.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp5.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_5")
  c.data.source = "lamp"
  c.stage2.examples = "records"  # profile records that make a prompt become training examples
  c.max_len = 384  # abstracts are long
  c.max_target_tokens = 32  # a paper title
  c.max_new_tokens = 32
  c.stage2.learning_rate = 5e-5
  return tiny(c) if variant == "tiny" else c
