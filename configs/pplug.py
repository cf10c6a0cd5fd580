"""PPlug (persona plug) on any task config: the task's data, backbone, prompts and budgets, with
PPlug as the stage-2 method (tapper_jax/methods/pplug.py).

  python -m tapper_jax.train --config=configs/pplug.py:huffpost_2N --workdir=DIR \
      --config.data.folder=OFFLINE_DIR/huffpost_2N
  python -m tapper_jax.train --config=configs/pplug.py:lamp2:time --workdir=DIR \
      --config.data.folder=LAMP_DIR
The argument names a task config: an offline variant (`huffpost_2N`, `movielens_2M`, ... as in
configs/offline.py) or a configs/lamp*.py module followed by its own argument (`lamp2:oppu`,
`lamp4:time,tiny`, `synthetic:tiny`). What PPlug changes is `defaults.METHOD_DEFAULTS["pplug"]`.
"""

import importlib.util
import os

from tapper_jax.training.defaults import with_method


def _config_module(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
  if not os.path.isfile(path):
    raise ValueError(f"configs/pplug.py: no task config {path}")
  spec = importlib.util.spec_from_file_location(f"_tapper_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = "huffpost_2N"):
  name, _, variant = arg.partition(":")
  offline = _config_module("offline")
  if name.partition(",")[0] in offline.TASKS:
    c = offline.get_config(name)
  else:
    c = _config_module(name).get_config(variant)
  return with_method(c, "pplug")
