"""News categorisation (LaMP-2N), official files.

  python -m tapper_jax.train --config=configs/lamp2n.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
`--config=configs/lamp2n.py:tiny` is the CPU smoke variant.
"""

from tapper_jax.training.defaults import base_config, tiny


def get_config(variant: str = ""):
  c = base_config("LaMP_2N")
  c.data.source = "lamp"
  c.stage2.examples = "records"  # profile records that make a prompt become training examples
  c.max_new_tokens = 8  # one category
  c.stage2.learning_rate = 1e-4
  return tiny(c) if variant == "tiny" else c
