"""OPPU-style per-user LoRA (r=8 on q and v per evaluated user) on any task config.

  python -m tapper_jax.train --config=configs/per_user_lora.py:huffpost_2N --workdir=DIR \
      --config.data.folder=OFFLINE_DIR/huffpost_2N --config.per_user.max_users=20
The argument names a task config as in configs/pplug.py. Adapters land in DIR/adapters/USER/
as PEFT folders. What the method changes is `defaults.METHOD_DEFAULTS["per_user_lora"]`.
"""

import os

from tapper_jax.training.defaults import task_config, with_method


def get_config(arg: str = "huffpost_2N"):
  c = with_method(task_config(arg, os.path.dirname(os.path.abspath(__file__))), "per_user_lora")
  if c.model.name == "tiny-random":
    c.per_user.steps = 2
  return c
