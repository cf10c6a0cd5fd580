"""Text features a T-POP reward can read in place of the sentence encoder's embedding: the
frozen LLM's own final-norm hidden states of the text alone (BOS + its tokens), mean-pooled or
at its last token. `LLMTextEncoder` has the sentence encoder's interface (`encode`, `dim`), so
the decoder, the rounds and the benchmarks take either (`load_encoder`: config.encoder
"llm:mean" or "llm:last"); benchmarks/tpop_features.py measures which lets a reward learn each
hidden rule."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tapper_jax.models.llama import init_cache

POOLS = ("mean", "last")


@functools.partial(jax.jit, static_argnames=("graphdef", "pool"))
def _pooled(graphdef, state, ids, mask, pool: str):
  """ids, mask [B,T] (right-padded) -> [B,D] float32."""
  h, _ = nnx.merge(graphdef, state).hidden_states(ids, attention_mask=mask)
  h = h.astype(jnp.float32)
  m = mask.astype(jnp.float32)[..., None]
  if pool == "mean":
    return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  last = jnp.maximum(mask.sum(1) - 1, 0)
  return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


class LLMTextEncoder:
  """texts -> [N,D] pooled hidden states of the frozen LLM, each text tokenized alone (BOS where
  the tokenizer has one, cut to `max_tokens`: BOS + 63 tokens holds a 48-token answer whole,
  which the decoder's feature cache needs; an empty text read as EOS). Batches are
  right-padded to power-of-two rows and lengths (few compilations)."""

  def __init__(self, llm, tokenizer, pool: str = "mean", batch_size: int = 64,
               max_tokens: int = 64):
    if pool not in POOLS:
      raise ValueError(f"pool {pool!r}: choose from {POOLS}")
    self.tokenizer, self.pool = tokenizer, pool
    self.batch_size, self.max_tokens = batch_size, max_tokens
    self.graphdef, self.state = nnx.split(llm)
    self.dim, self.config = llm.config.hidden_size, llm.config
    self._silent: dict[int, bool] = {}

  def _embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(_pooled(self.graphdef, self.state, jnp.asarray(ids), jnp.asarray(mask),
                              self.pool))

  def encode(self, texts, *, progress=None) -> np.ndarray:
    del progress  # the sentence encoder's keyword; a few texts a call here
    return self._encode_rows([self.tokenizer.encode(str(t), add_bos=True) for t in texts])

  def silent(self, token: int) -> bool:
    """Whether a token leaves no text (EOS, chat markers): decoding drops it, so it adds
    nothing to a text's features."""
    if token not in self._silent:
      self._silent[token] = self.tokenizer.decode([token]) == ""
    return self._silent[token]

  def encode_ids(self, texts_ids) -> np.ndarray:
    """[N,D] features of texts given as the LLM's own token ids (a decoded answer), read as
    `encode` reads their text but without re-tokenizing it: BOS + the ids that leave text."""
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return self._encode_rows([bos + [int(t) for t in ids if not self.silent(int(t))]
                              for ids in texts_ids])

  def _encode_rows(self, rows_ids) -> np.ndarray:
    from tapper_jax.models.tokenizer import bucket_length
    tok, out = self.tokenizer, []
    for s in range(0, len(rows_ids), self.batch_size):
      ids = [r[:self.max_tokens] or [tok.eos_id] for r in rows_ids[s:s + self.batch_size]]
      rows, mask = tok.pad(ids, side="right", length=bucket_length(max(map(len, ids)), smallest=8))
      pad = bucket_length(len(ids), smallest=8, largest=self.batch_size) - len(ids)
      rows, mask = np.pad(rows, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
      out.append(self._embed(rows, mask)[:len(ids)])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _extend(graphdef, state, cache, ids, positions, mask, cursor):
  """Rows ids, positions [A,T] written at cache slots cursor..cursor+T-1, row t of arm a seeing
  the slots mask [A,T,S] marks -> (final-norm hidden states [A,T,D] float32, cache)."""
  h, cache = nnx.merge(graphdef, state).hidden_states(
      ids, attention_mask=mask, positions=positions, cache=cache, cache_index=cursor)
  return h.astype(jnp.float32), cache


class FeatureCache:
  """An `LLMTextEncoder`'s features of growing texts, one per decoding arm, and of every
  candidate next token of each in one cached call: `features({arm: candidates [C]})` gives
  {arm: [C,D]}, equal to `encoder.encode_ids([text + [c]])` for each candidate c (silent ones
  leave the text as it is); `append(arm, token)` extends an arm's text.

  A call writes T rows per arm at cache slots cursor..cursor+T-1: first the tokens the arm took
  since the last call (causal: they join its text), then one row per candidate at the next
  position that sees the text and itself only (a tree mask), so the candidates are scratch the
  next call overwrites. Mean pooling keeps the text's sum of hidden states; a candidate adds its
  own row. So a step costs one forward of (new tokens + candidates) rows, not one forward of
  every candidate's whole text."""

  def __init__(self, encoder: LLMTextEncoder, arms: int):
    bos = encoder.tokenizer.bos_id
    if bos is None:
      raise ValueError("FeatureCache needs a tokenizer with a BOS token (encode the texts instead)")
    self.enc, self.size, self.cursor, self.rows = encoder, 0, 0, 0
    self.cache = init_cache(encoder.config, arms, 0)
    self.seen = np.zeros((arms, 0), bool)  # [A,S] the slots that hold each arm's text
    self.count = np.zeros(arms, np.int64)  # tokens in each arm's text, BOS included
    self.total = np.zeros((arms, encoder.dim), np.float64)  # the sum of their hidden states
    self.last = np.zeros((arms, encoder.dim), np.float32)  # the last one's
    self.pending = [[bos] for _ in range(arms)]  # taken, not yet in the cache

  def append(self, arm: int, token: int):
    if not self.enc.silent(int(token)):
      self.pending[arm].append(int(token))

  def _grow(self, size: int):
    pad = size - self.size
    self.cache = {k: jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0)))
                  for k, v in self.cache.items()}
    self.seen = np.pad(self.seen, ((0, 0), (0, pad)))
    self.size = size

  def features(self, cands: dict) -> dict:
    from tapper_jax.models.tokenizer import bucket_length
    arms, c0 = len(self.pending), self.cursor
    cands = {a: np.asarray(c, np.int64) for a, c in cands.items()}
    rows = [len(self.pending[a]) + len(cands.get(a, ())) for a in range(arms)]
    if (self.count + [len(p) for p in self.pending]).max() + 1 > self.enc.max_tokens:
      raise ValueError(f"a text beyond the encoder's max_tokens={self.enc.max_tokens}: encode "
                       "would cut it, the cache does not")
    t = self.rows = bucket_length(max(rows), smallest=8)  # rows per arm in this call
    if c0 + t > self.size:
      self._grow(bucket_length(c0 + t, smallest=32))
    ids, pos = np.zeros((arms, t), np.int32), np.zeros((arms, t), np.int32)
    mask = np.repeat(self.seen[:, None, :], t, axis=1)  # [A,T,S] each row sees its arm's text
    mask[:, np.arange(t), c0 + np.arange(t)] = True  # and itself (padding rows: no empty row)
    for a, new in enumerate(self.pending):
      k, cs, n = len(new), cands.get(a, np.zeros(0, np.int64)), self.count[a]
      ids[a, :k], pos[a, :k] = new, n + np.arange(k)
      mask[a, :k, c0:c0 + k] |= np.tril(np.ones((k, k), bool))
      ids[a, k:k + len(cs)], pos[a, k:k + len(cs)] = cs, n + k
      mask[a, k:k + len(cs), c0:c0 + k] = True
    h, self.cache = _extend(self.enc.graphdef, self.enc.state, self.cache, jnp.asarray(ids),
                            jnp.asarray(pos), jnp.asarray(mask), c0)
    h = np.array(h)
    out = {}
    for a, new in enumerate(self.pending):
      k = len(new)
      if k:
        self.total[a] += h[a, :k].sum(0, dtype=np.float64)
        self.last[a], self.count[a] = h[a, k - 1], self.count[a] + k
        self.seen[a, c0:c0 + k] = True
      if a not in cands:
        continue
      cs = cands[a]
      hc = h[a, k:k + len(cs)]
      text = self.total[a] / self.count[a] if self.enc.pool == "mean" else self.last[a]
      f = (self.total[a] + hc) / (self.count[a] + 1) if self.enc.pool == "mean" else hc
      f[[self.enc.silent(int(c)) for c in cs]] = text
      out[a] = f.astype(np.float32)
    self.cursor += max(len(p) for p in self.pending)
    self.pending = [[] for _ in range(arms)]
    return out


def load_encoder(name: str, llm, tokenizer, batch_size: int = 128):
  """The text encoder a T-POP config names: "llm:mean" / "llm:last" (the frozen LLM's own
  states, above) or a sentence encoder (registry name or folder)."""
  if name.startswith("llm:"):
    return LLMTextEncoder(llm, tokenizer, name.split(":", 1)[1])
  from tapper_jax.models import registry
  from tapper_jax.models.bert import SentenceEncoder
  return SentenceEncoder.from_pretrained(registry.encoder_folder(name), batch_size=batch_size)
