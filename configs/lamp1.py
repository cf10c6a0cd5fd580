"""Citation identification (LaMP-1), official user-based files.

  python -m tapper_jax.train --config=configs/lamp1.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp1.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_1")
  c.data.source = "lamp"
  c.stage2.examples = "questions"  # LaMP-1 records (titles) make no prompt of their own
  c.max_new_tokens = 4  # "[1]" or "[2]"
  c.stage2.learning_rate = 1e-4
  return tiny(c) if variant == "tiny" else c
