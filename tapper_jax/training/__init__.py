"""Training: the loop, pure step functions, optimizer, Orbax checkpoints, sharding, logging."""
