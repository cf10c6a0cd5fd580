"""Movie tagging (LaMP-2, movies), official files.

  python -m tapper_jax.train --config=configs/lamp2.py --workdir=DIR --config.data.folder=LAMP_DIR
LAMP_DIR holds {train,dev}_questions.json and _outputs.json (`python -m tapper_jax.data.download`).
Variants: `:time` (default; official time-based files), `:user` (user-based), `:oppu` (the OPPU
re-split: user_others.json / user_top_100_history.json); add `,tiny` for the CPU smoke size.
"""

from tapper_jax.training.defaults import lamp_config


def get_config(variant: str = ""):
  return lamp_config(
      "LaMP_2M", variant,
      max_prompt_tokens=256,  # instruction + the (shortened) input
      max_target_tokens=8,  # one tag + EOS
      max_new_tokens=8)
