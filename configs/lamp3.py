"""Product rating (LaMP-3), official files.

  python -m tapper_jax.train --config=configs/lamp3.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp3.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_3")
  c.data.source = "lamp"
  c.stage2.examples = "records"  # profile records that make a prompt become training examples
  c.max_new_tokens = 4  # one digit
  c.stage2.learning_rate = 1e-4
  return tiny(c) if variant == "tiny" else c
