"""Citation identification (LaMP-1), official user-based files.

  python -m tapper_jax.train --config=configs/lamp1.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
Variants: `:time` (default; official time-based files), `:user` (user-based), `:oppu` (the OPPU
re-split: user_others.json / user_top_100_history.json); add `,tiny` for the CPU smoke size.
"""

from tapper_jax.training.defaults import lamp_config


def get_config(variant: str = ""):
  return lamp_config(
      "LaMP_1", variant,
      max_prompt_tokens=128,  # instruction + the (shortened) input
      max_target_tokens=16,  # "[1]" or "[2]" + EOS
      max_new_tokens=4)
