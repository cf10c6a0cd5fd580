"""Tokenizer at run time: `tokenizers` + jinja2 chat templates, no transformers, no torch."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np



def bucket_length(n: int, *, smallest: int = 16, largest: int | None = None) -> int:
  """A padded length for n tokens: the next power of two, at least `smallest`, at most
  `largest` (few distinct shapes, so few compilations)."""
  b = max(smallest, 1 << (max(n, 1) - 1).bit_length())
  return b if largest is None else min(b, largest)

class TokenizerError(ValueError):
  """A tokenizer that cannot be built; the message names the file and field."""


class Tokenizer:
  """Thin wrapper: encode/decode, special ids, chat template, and padding to arrays."""

  def __init__(self, tk, *, bos_id: int | None, eos_id: int | None, pad_id: int | None,
               chat_template: str | None = None, source: str = "<memory>"):
    self.tk, self.bos_id, self.eos_id = tk, bos_id, eos_id
    self.pad_id = pad_id if pad_id is not None else eos_id
    self.chat_template, self.source = chat_template, source

  @classmethod
  def from_pretrained(cls, folder: str) -> "Tokenizer":
    from tokenizers import Tokenizer as HFTokenizer
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
      raise TokenizerError(f"{path}: missing")
    try:
      tk = HFTokenizer.from_file(path)
    except Exception as e:
      raise TokenizerError(f"{path}: cannot build a tokenizer ({e})") from e
    conf_path = os.path.join(folder, "tokenizer_config.json")
    conf = {}
    if os.path.isfile(conf_path):
      try:
        with open(conf_path, encoding="utf-8") as f:
          conf = json.load(f)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{conf_path}: not valid JSON ({e})") from e

    def tok_id(field):
      t = conf.get(field)
      t = t.get("content") if isinstance(t, dict) else t
      if t is None:
        return None
      i = tk.token_to_id(t)
      if i is None:
        raise TokenizerError(f"{conf_path}: field {field!r} = {t!r} is not in the vocabulary")
      return i

    return cls(tk, bos_id=tok_id("bos_token"), eos_id=tok_id("eos_token"),
               pad_id=tok_id("pad_token"), chat_template=conf.get("chat_template"), source=path)

  @property
  def max_token_chars(self) -> int:
    """The most characters any single token decodes to: a text's first n tokens lie within its
    first n * max_token_chars characters (so huge texts can be cut before tokenizing)."""
    if getattr(self, "_max_token_chars", None) is None:
      self._max_token_chars = max(len(self.tk.decode([i])) for i in range(self.vocab_size))
    return self._max_token_chars

  @property
  def vocab_size(self) -> int:
    return self.tk.get_vocab_size()

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.tk.encode(text, add_special_tokens=False).ids
    return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt=True) -> str:
    if not self.chat_template:
      raise TokenizerError(f"{self.source}: no chat_template in tokenizer_config.json")
    if getattr(self, "_template", None) is None:  # compiled once: prompts render per example
      import jinja2
      env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
      self._template = env.from_string(self.chat_template)
    return self._template.render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=self.tk.id_to_token(self.bos_id) if self.bos_id is not None else "",
        eos_token=self.tk.id_to_token(self.eos_id) if self.eos_id is not None else "")

  def pad(self, seqs: Sequence[Sequence[int]], *, side: str = "left",
          length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pads (never truncates) to `length` or the longest: ids [B,T] int32, mask [B,T] int32."""
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if longest > length:
      raise ValueError(f"a sequence of {longest} tokens does not fit length {length}")
    ids = np.full((len(seqs), length), self.pad_id if self.pad_id is not None else 0, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
      sl = slice(length - len(s), length) if side == "left" else slice(0, len(s))
      ids[i, sl], mask[i, sl] = s, 1
    return ids, mask
