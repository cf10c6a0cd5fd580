"""Movie tagging (LaMP-2, movies), official files.

  python -m tapper_jax.train --config=configs/lamp2.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp2.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_2M")
  c.data.source = "lamp"
  c.stage2.examples = "records"  # profile records that make a prompt become training examples
  c.max_new_tokens = 8  # one tag
  c.stage2.learning_rate = 1e-4
  return tiny(c) if variant == "tiny" else c
