"""PPlug (persona plug) on any task config: the task's data, backbone, prompts and budgets, with
PPlug as the stage-2 method (tapper_jax/methods/pplug.py).

  python -m tapper_jax.train --config=configs/pplug.py:huffpost_2N --workdir=DIR \
      --config.data.folder=OFFLINE_DIR/huffpost_2N
  python -m tapper_jax.train --config=configs/pplug.py:lamp2:time --workdir=DIR \
      --config.data.folder=LAMP_DIR
The argument names a task config: an offline variant (`huffpost_2N`, `movielens_2M`, ... as in
configs/offline.py) or a configs/*.py module followed by its own argument (`lamp2:oppu`,
`lamp4:time,tiny`, `synthetic:tiny`). What PPlug changes is `defaults.METHOD_DEFAULTS["pplug"]`.
"""

import os

from tapper_jax.training.defaults import task_config, with_method


def get_config(arg: str = "huffpost_2N"):
  return with_method(task_config(arg, os.path.dirname(os.path.abspath(__file__))), "pplug")
