"""Per-user training (OPPU-style LoRA): the shared stage-2 step, run once per user from fresh
trainable state on that user's examples alone, then that user's questions answered with it.

One StageRun serves every user (one compiled step); each user has its own checkpoint folder
(workdir/users/USER/, so a killed run resumes user by user), its adapter as a PEFT folder
(workdir/adapters/USER/) and the ids of the examples it trained on (trained_on.json beside it).
"""

from __future__ import annotations

import json
import os

import jax
from absl import logging

from tapper_jax.models.lora import save_peft_adapter
from tapper_jax.training import distributed, evaluation
from tapper_jax.training import examples as ex


def user_dir(user: str) -> str:
  """A user id as a folder name: itself when safe, else a sanitised form plus its CRC-32 (ids may
  hold any character; two ids never share a folder)."""
  import zlib
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
  if safe == user and user not in (".", ".."):
    return user
  return f"{safe}-{zlib.crc32(user.encode('utf-8')):08x}"


def train_and_predict(run, config, workdir: str, users, examples, evaluate, prompts, base_model):
  """Trains a LoRA per user in `users` on their `examples` and answers their `evaluate`
  examples with it. Returns (predictions by example id, {user: trained example count}, the
  gold's NLL by example id under the user's own LoRA: {} unless `config.eval_nll`)."""
  preds, counts, nll = {}, {}, {}
  score_nll = evaluation.wants_nll(config, evaluate)
  base_key = run.key
  for i, user in enumerate(users):
    mine = [e for e in examples if e.user == user]
    if not mine:
      raise ValueError(f"user {user!r} has no training examples")
    folder = os.path.join(workdir, "users", user_dir(user))
    run.key = jax.random.fold_in(base_key, i)
    ds = ex.train_dataset(mine, prompts, config, config.stage2, seed=config.seed + i,
                          mesh=run.mesh)
    state = run.fit(ds, folder, {}, example_ids=[e.id for e in mine])
    model = run.model(state)
    adapter = os.path.join(workdir, "adapters", user_dir(user))
    whole = evaluation.host_local(model)  # a collective: every process, saving or not
    if not os.path.isdir(adapter) and distributed.is_main():
      save_peft_adapter(whole.llm, adapter, base_model=base_model)
      with open(os.path.join(adapter, "trained_on.json"), "w", encoding="utf-8") as f:
        json.dump({"user": user, "examples": [e.id for e in mine]}, f, indent=1)
    asked = [e for e in evaluate if e.user == user]
    for e, p in zip(asked, evaluation.predict_everywhere(model, asked, prompts, config)):
      preds[e.id] = p
    if score_nll and asked:
      nll.update(zip((e.id for e in asked),
                     map(float, evaluation.gold_nll(model, asked, prompts, config))))
    counts[user] = len(mine)
    logging.info("per-user LoRA %d/%d: user %s, %d examples, %d questions", i + 1, len(users),
                 user, len(mine), len(asked))
  run.key = base_key
  return preds, counts, nll
