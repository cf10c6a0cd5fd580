"""Prompt text -> token ids, the same way in training and generation.

Three rules, each a defect we had:
- The prompt/target boundary tokenizes as the concatenated text would. A plain prompt ends in
  "Answer:" and its target starts with a space (" comedy" is one token; "com"+"edy" after a
  lone space token is a sequence the model rarely sees). A chat prompt ends in the assistant
  header ("...assistant\\n") and the target starts there, as the model's own answers do.
- A long input is shortened inside its variable text (the article, description, abstract:
  everything from `keep` on), never in the instruction or the label list before it.
- One prompt budget (`max_prompt_tokens`) in training and in generation.

`data/` knows nothing of models: the tokenizer is any object with `encode`, `decode`,
`eos_id` and, for chat prompts, `apply_chat_template`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PLAIN_SUFFIX = "\nAnswer:"  # ends a plain prompt; the target then starts with a space


def char_cap(tokenizer, max_tokens: int) -> int | None:
  """Characters of a text that surely hold its first `max_tokens` tokens (with a 4x margin for
  merges near the cut), or None when the tokenizer cannot say."""
  per = getattr(tokenizer, "max_token_chars", None)
  return 4 * (max_tokens + 8) * per if per else None


class PromptTooLong(ValueError):
  """The fixed part of a prompt (instruction, labels) alone exceeds the prompt budget."""


@dataclasses.dataclass
class PromptFormat:
  tokenizer: Any
  max_prompt_tokens: int
  chat: bool = False  # wrap the prompt as one user turn of the model's chat template

  def render(self, text: str) -> str:
    if self.chat:
      return self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True)
    return text + PLAIN_SUFFIX

  def target_text(self, target: str) -> str:
    """The target as it continues the rendered prompt."""
    return target if self.chat else " " + target

  def encode(self, text: str, keep: int = 0) -> tuple[list[int], bool]:
    """(prompt ids, shortened?). Characters before `keep` are never cut; the variable text
    after it loses its end until the rendered prompt fits `max_prompt_tokens`."""
    head, body = text[:keep], text[keep:]
    cap = char_cap(self.tokenizer, self.max_prompt_tokens)
    if cap and len(body) > cap:  # a huge input (MBs): never tokenize more than can be kept
      ids, _ = self.encode(head + body[:cap], keep)
      return ids, True
    ids = self.tokenizer.encode(self.render(text))
    if len(ids) <= self.max_prompt_tokens:
      return ids, False
    body_ids = self.tokenizer.encode(body)
    over = len(ids) - self.max_prompt_tokens
    for _ in range(8):  # decoding a cut can re-merge tokens: re-check, cut a little more
      n = max(0, len(body_ids) - over)
      ids = self.tokenizer.encode(self.render(head + self.tokenizer.decode(body_ids[:n])))
      if len(ids) <= self.max_prompt_tokens:
        return ids, True
      if n == 0:
        raise PromptTooLong(
            f"the fixed part of a prompt takes {len(ids)} tokens, over max_prompt_tokens="
            f"{self.max_prompt_tokens}: {head[:80]!r}...")
      over += len(ids) - self.max_prompt_tokens
    raise PromptTooLong(f"could not fit a prompt into {self.max_prompt_tokens} tokens")

  def encode_target(self, target: str, max_target_tokens: int) -> tuple[list[int], bool]:
    """(target ids ending in EOS, cut?). A target longer than the budget loses its end and
    its EOS; the caller counts it."""
    ids = self.tokenizer.encode(self.target_text(target)) + [self.tokenizer.eos_id]
    return ids[:max_target_tokens], len(ids) > max_target_tokens
