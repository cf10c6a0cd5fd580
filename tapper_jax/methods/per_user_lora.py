"""OPPU-style per-user LoRA: one LoRA (r=8 on q and v) per evaluated user, trained on that user's
own profile records only, on the frozen stage-1 backbone; each user's questions are answered
with their own adapter. Adapters are saved per user as PEFT folders (workdir/adapters/USER/).

Unlike the public OPPU code, user i's data is user i's records alone (it accumulates users
0..i into user i's training set). The training itself is the shared stage-2 step, run once per
user from a fresh LoRA (training/per_user.py); only the LoRA's shape differs
(`defaults.METHOD_DEFAULTS["per_user_lora"]`).
"""

from __future__ import annotations

from typing import Sequence

from tapper_jax.methods.base import Method


class PerUserLoraMethod(Method):
  name = "per_user_lora"
  per_user = True  # the loop trains one LoRA per user (training/per_user.py)

  def lora_users(self, examples: Sequence) -> list[str]:
    """The users that get a LoRA: every user with training examples, sorted, or the first
    `per_user.max_users` of them (a stated subset where the budget requires)."""
    users = sorted({e.user for e in examples})
    n = self.config.per_user.max_users
    return users[:n] if n > 0 else users
