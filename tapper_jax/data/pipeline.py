"""grain input pipeline: tokenize, pad and batch LaMP examples; checkpointable iterator state.

Examples are dicts with "input" and "target" strings and optionally "keep" (characters of the
input never shortened: the instruction and label list; see `data.prompts`). A TFDS data source
from `tfds_lamp` or any random-access sequence works. Each becomes (T = P + K tokens, P the
prompt budget, K the target budget):
  input_ids  [T] int32  prompt + target + EOS, right-padded
  loss_mask  [T] int32  1 on the target and EOS tokens only
  attention_mask [T] int32
  target_pos [K] int32, target_valid [K] int32: the positions in input_ids that carry loss
  shortened, target_cut []  int32: the input was shortened / the target lost its end (counted)
  index      []  int32  the example's position in the source (to find its user and history)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from tapper_jax.data.prompts import PromptFormat


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclasses.dataclass
class Tokenize(grain.transforms.Map):
  prompts: PromptFormat
  max_target_tokens: int

  def map(self, element):
    index, ex = element
    p, k = self.prompts.max_prompt_tokens, self.max_target_tokens
    prompt, shortened = self.prompts.encode(_text(ex["input"]), int(ex.get("keep", 0)))
    target, cut = self.prompts.encode_target(_text(ex["target"]), k)
    ids = prompt + target
    pad = self.prompts.tokenizer.pad_id
    out = np.full((p + k,), 0 if pad is None else pad, np.int32)
    out[: len(ids)] = ids
    loss = np.zeros((p + k,), np.int32)
    loss[len(prompt): len(ids)] = 1
    mask = np.zeros((p + k,), np.int32)
    mask[: len(ids)] = 1
    tp = np.zeros((k,), np.int32)
    tp[: len(target)] = np.arange(len(prompt), len(ids))
    tv = (np.arange(k) < len(target)).astype(np.int32)
    return {"input_ids": out, "loss_mask": loss, "attention_mask": mask, "target_pos": tp,
            "target_valid": tv, "shortened": np.int32(shortened), "target_cut": np.int32(cut),
            "index": np.int32(index)}


def make_dataset(source: Sequence, prompts: PromptFormat, *, max_target_tokens: int,
                 batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, drop_remainder: bool = True,
                 maps: Sequence = ()) -> grain.IterDataset:
  """A grain IterDataset of batches; `iter()` it, and use get_state()/set_state() to resume.

  `maps`: further per-example transforms run after tokenizing (e.g. the trainer's history
  lookup), each given and returning the example dict.
  """
  # (index, example): the index lets the trainer find the example's user and history.
  ds = grain.MapDataset.range(len(source)).map(lambda i: (i, source[i]))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(Tokenize(prompts, max_target_tokens))
  for m in maps:
    ds = ds.map(m)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.to_iter_dataset()
