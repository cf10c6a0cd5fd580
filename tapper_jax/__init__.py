"""tapper-jax: TAP-PER (Temporal Attentive Prefix for PERsonalization) of LLMs in JAX/Flax."""

import flax

# Variables carry logical axis names as metadata only; shardings are applied where state is
# created (jit(init, out_shardings=...)), from the one rules table in the config. Flax 0.12's
# eager sharding would instead demand a mesh at every Variable construction.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
