"""T-POP: test-time personalization from pairwise preferences (tapper_jax/tpop/reward.py,
decode.py, user.py, run.py)."""
