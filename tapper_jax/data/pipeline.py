"""grain input pipeline: tokenize, pad and batch LaMP examples; checkpointable iterator state.

Examples are dicts with "input" and "target" strings (a TFDS data source from `tfds_lamp`, or
any random-access sequence). Each becomes
  input_ids  [T] int32  prompt + target + EOS, right-padded
  loss_mask  [T] int32  1 on the target and EOS tokens only
  attention_mask [T] int32
  index      []  int32  the example's position in the source (to find its user and profile)
The prompt is cut from the left when prompt + target exceeds T (the target is never cut unless
it alone exceeds T). The tokenizer is any object with `encode(str) -> list[int]` and `eos_id`,
`pad_id`; `data/` knows nothing of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

PROMPT_SUFFIX = "\nAnswer: "  # between a prompt and its target, in training and generation


def _text(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclasses.dataclass
class Tokenize(grain.transforms.Map):
  tokenizer: Any
  max_len: int
  prompt_suffix: str = PROMPT_SUFFIX

  def map(self, element):
    index, ex = element
    prompt = self.tokenizer.encode(_text(ex["input"]) + self.prompt_suffix)
    target = self.tokenizer.encode(_text(ex["target"])) + [self.tokenizer.eos_id]
    target = target[: self.max_len]
    prompt = prompt[max(0, len(prompt) - (self.max_len - len(target))):]
    ids = prompt + target
    n = len(ids)
    out = np.full((self.max_len,), self.tokenizer.pad_id, np.int32)
    out[:n] = ids
    loss = np.zeros((self.max_len,), np.int32)
    loss[len(prompt):n] = 1
    mask = np.zeros((self.max_len,), np.int32)
    mask[:n] = 1
    return {"input_ids": out, "loss_mask": loss, "attention_mask": mask,
            "index": np.int32(index)}


def make_dataset(source: Sequence, tokenizer, *, batch_size: int, max_len: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True, maps: Sequence = ()) -> grain.IterDataset:
  """A grain IterDataset of batches; `iter()` it, and use get_state()/set_state() to resume.

  `maps`: further per-example transforms run after tokenizing (e.g. the trainer's history
  lookup), each given and returning the example dict.
  """
  # (index, example): the index lets the trainer find the example's user and profile.
  ds = grain.MapDataset.range(len(source)).map(lambda i: (i, source[i]))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(Tokenize(tokenizer, max_len))
  for m in maps:
    ds = ds.map(m)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.to_iter_dataset()
