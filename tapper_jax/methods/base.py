"""The method interface: what a method supplies to the shared stage-2 harness."""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx

# An example's personal inputs as batch fields (user_row, query_z, hist_*, ...): a grain
# `Map` the training pipeline runs, whose `.fields(i)` gives example i's fields at evaluation.
Fields = Any


class Method:
  """Subclasses override what differs; the defaults are a method with no personal input (the
  bridge LoRA alone, when the config keeps it)."""

  name = "none"
  # Controls (config.eval_controls) a method that reads the history as text answers by
  # rebuilding its prompts from control examples (`training.loop.control_examples`); a method
  # with fields answers them through its fields instead.
  text_controls: tuple[str, ...] = ()

  def __init__(self, config):
    self.config = config

  def examples(self, spec, eval_qs, stage1_qs, report) -> list:
    """Stage-2 training examples (training.examples.Example)."""
    from tapper_jax.training import examples as ex
    return ex.stage2_examples(spec, self.config.stage2.examples, eval_qs, stage1_qs, report)

  def users(self, examples: Sequence) -> list[str]:
    """The users that get parameters of their own (rows of a table), sorted."""
    return []

  def prefix_module(self, d: int, num_rows: int, rngs: nnx.Rngs) -> nnx.Module | None:
    """The trainable module that turns a batch's personal inputs into soft tokens [B,L,D]
    (with a `prefix_len`), or None for no soft tokens."""
    return None

  def init_values(self) -> dict:
    """Data-dependent initial values of the prefix module's params, by path from the model
    ("tapper/attention/z_center" -> array); read after `fields` has seen the data."""
    return {}

  def prompts(self, examples: Sequence, plan, tokenizer, prompt_format) -> list:
    """The examples as this method prompts the LLM (retrieval writes records into the input);
    applied to stage-2 training and evaluation examples alike."""
    return list(examples)

  def fields(self, examples: Sequence, plan, tokenizer, llm, id_map: dict,
             slots_from: Sequence[Sequence] = ()) -> Fields | None:
    """Per-example personal inputs for `examples`, or None when the method reads none."""
    return None
