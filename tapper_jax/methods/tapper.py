"""TAP-PER in the harness: P_u (a table row per trained user) + P_q (temporal attention over
the user's whole visible history, read from the record bank), as L soft tokens, with the bridge
LoRA. Switches (config.stage2.*) turn parts off for ablations and controls; `prefix=False`
leaves the bridge LoRA alone."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from tapper_jax.methods.base import Fields, Method
from tapper_jax.tapper.attention import standardize_stats
from tapper_jax.tapper.bank import mean_embedder
from tapper_jax.tapper.model import Tapper


class TapperMethod(Method):
  name = "tapper"

  def __init__(self, config):
    super().__init__(config)
    self._bank = self._embed = None  # the record bank, built once per run

  def users(self, examples: Sequence) -> list[str]:
    s2 = self.config.stage2
    return sorted({e.user for e in examples}) if s2.prefix and s2.user_prefix else []

  def prefix_module(self, d: int, num_rows: int, rngs: nnx.Rngs) -> nnx.Module | None:
    s = self.config.stage2
    if not s.prefix:
      return None
    return Tapper(d, s.prefix_len, num_rows, user_prefix=s.user_prefix,
                  query_prefix=s.query_prefix, time_decay=s.time_decay,
                  order_decay=s.order_decay, chunk=s.attention_chunk, rngs=rngs)

  def init_values(self) -> dict:
    """With `stage2.standardize_z`: z_center, z_scale from the record bank (every record of
    the run's profiles: inputs only, no evaluated gold), fixed from then on."""
    if not (self.config.stage2.prefix and self.config.stage2.query_prefix
            and self.config.stage2.get("standardize_z", False)):
      return {}
    if self._bank is None:
      raise RuntimeError("init_values reads the record bank: call fields() first")
    center, scale = standardize_stats(self._bank.z)
    return {"tapper/attention/z_center": center, "tapper/attention/z_scale": np.float32(scale)}

  def fields(self, examples, plan, tokenizer, llm, id_map, slots_from=()) -> Fields | None:
    """HistoryFields over the record bank of every profile the run sees (built on first use)."""
    if not self.config.stage2.prefix:
      return None
    from tapper_jax.training import examples as ex
    s2 = self.config.stage2
    if self._bank is None:
      table = np.asarray(jax.device_get(llm.model.embed_tokens.embedding.get_value()))
      self._embed = mean_embedder(tokenizer, table, s2.record_tokens)
      self._bank = ex.build_bank(plan.spec, [plan.stage1_qs, plan.eval_qs], self._embed)
    slots = ex.history_slots([examples, *slots_from], s2.max_history, s2.attention_chunk)
    return ex.HistoryFields(examples, self._bank, ex.embed_queries(examples, self._embed),
                            id_map, slots, s2.max_history)
