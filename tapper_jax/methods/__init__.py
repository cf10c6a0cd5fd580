"""Methods: the part of a stage-2 run that differs. The harness (data, backbone, training loop,
decoding, metrics, checkpoints, the quality benchmark) is written once in `training/`; a
method declares its trainable modules, the per-example inputs they read, and the examples it
trains on. `get(config)` returns the configured method."""

from tapper_jax.methods.base import Method
from tapper_jax.methods.per_user_lora import PerUserLoraMethod
from tapper_jax.methods.pplug import PPlugMethod
from tapper_jax.methods.rag import RagMethod
from tapper_jax.methods.tapper import TapperMethod

METHODS: dict[str, type[Method]] = {"tapper": TapperMethod, "pplug": PPlugMethod,
                                    "rag": RagMethod, "per_user_lora": PerUserLoraMethod}


def get(config) -> Method:
  try:
    return METHODS[config.method](config)
  except KeyError:
    from tapper_jax.errors import ConfigError
    raise ConfigError(f"config.method={config.method!r}: choose from {sorted(METHODS)}") from None
