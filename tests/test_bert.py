"""Our Flax BERT / sentence encoder against Hugging Face PyTorch (and sentence-transformers)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax.numpy as jnp

from tapper_jax.errors import ConfigError
from tapper_jax.models import registry
from tapper_jax.models.bert import BertConfig, SentenceEncoder, l2_normalize, load_bert, mean_pool

TOL = 1e-5  # fp32 max abs difference of hidden states / embeddings; fixed, never loosened


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from transformers import BertConfig as HFConfig, BertModel as HFBert
  folder = str(tmp_path_factory.mktemp("tiny_bert"))
  torch.manual_seed(0)
  hf = HFBert(HFConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
                       initializer_range=0.3),  # large enough that GELU's curvature counts
              add_pooling_layer=False)
  with torch.no_grad():  # random init leaves biases 0 and LayerNorms 1: perturb so they count
    for n, p in hf.named_parameters():
      if n.endswith("bias") or "LayerNorm" in n:
        p.add_(0.1 * torch.randn_like(p))
  hf.eval()
  hf.save_pretrained(folder)
  return hf, load_bert(folder), folder


def _batch(seed=0, b=3, t=11, vocab=97):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, vocab, (b, t))
  mask = np.zeros((b, t), np.int64)
  for i, n in enumerate([t, t - 4, 2][:b]):
    mask[i, :n] = 1
  types = rng.randint(0, 2, (b, t))
  return np.where(mask > 0, ids, 0), mask, types


def test_hidden_states_match_hf(tiny):
  hf, ours, _ = tiny
  ids, mask, types = _batch()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
  diff = np.abs(ref - got)[mask > 0].max()
  assert diff <= TOL, diff
  # Padding must not leak into real tokens: the same sentence alone gives the same states.
  alone = np.asarray(ours(jnp.asarray(ids[1:2, :7]), jnp.asarray(mask[1:2, :7]),
                          jnp.asarray(types[1:2, :7])))
  assert np.abs(alone[0] - got[1, :7]).max() <= TOL


def test_pooling_matches_sentence_transformers_rule():
  h = np.random.RandomState(1).randn(2, 4, 3).astype(np.float32)
  m = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  ref = np.stack([h[0, :2].mean(0), h[1].mean(0)])
  ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
  got = np.asarray(l2_normalize(mean_pool(jnp.asarray(h), jnp.asarray(m))))
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_config_errors_name_the_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"model_type": "llama"}))
  with pytest.raises(ConfigError, match="config.json.*model_type"):
    BertConfig.from_pretrained(str(tmp_path))
  path.write_text("{not json")
  with pytest.raises(ConfigError, match="config.json"):
    BertConfig.from_pretrained(str(tmp_path))


def _minilm():
  try:
    return registry.encoder_folder("all-minilm-l6-v2")
  except FileNotFoundError as e:
    pytest.skip(str(e))


TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog near the river bank.",
         "Café naïve résumé: 42 ÜBER-cool!!", "a " * 400,  # longer than max_seq_length
         "", "Obama signs bill on health care reform", "中文 text mixed with English"]


@pytest.mark.slow
def test_minilm_matches_hf_and_sentence_transformers():
  folder = _minilm()
  from transformers import AutoTokenizer, BertModel as HFBert
  enc = SentenceEncoder.from_pretrained(folder, batch_size=4)  # 7 texts: a padded last batch
  assert enc.max_seq_length == 256 and enc.dim == 384
  got = enc.encode(TEXTS)
  tok = AutoTokenizer.from_pretrained(folder)
  b = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
  ids, _ = enc.tokenize(TEXTS)
  for i in range(len(TEXTS)):
    n = int(b["attention_mask"][i].sum())
    assert ids[i, :n].tolist() == b["input_ids"][i, :n].tolist() and not ids[i, n:].any()
  hf = HFBert.from_pretrained(folder).eval()
  with torch.no_grad():
    h = hf(**b).last_hidden_state
  m = b["attention_mask"][..., None].float()
  ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy()
  assert np.abs(ref - got).max() <= TOL
  try:
    from sentence_transformers import SentenceTransformer
  except ImportError:
    return
  st = SentenceTransformer(folder, device="cpu").encode(TEXTS, convert_to_numpy=True)
  assert np.abs(st - got).max() <= TOL
  # and the embeddings mean something: the paraphrase is nearer than the unrelated text
  a, p, u = enc.encode(["A man is playing a guitar.", "Someone plays the guitar.",
                        "The stock market fell sharply today."])
  assert a @ p > a @ u + 0.3


def test_unknown_encoder_name():
  with pytest.raises(ValueError, match="unknown encoder"):
    registry.encoder_folder("no-such-encoder")


def test_encode_embeds_texts_that_tokenize_alike_once(tiny):
  """Texts with equal token ids (an uncased model: "The" and "the") are embedded once, and each
  text's row equals that text embedded alone (its own padded length)."""
  from tokenizers import Tokenizer, models as tm, normalizers, pre_tokenizers, processors
  vocab = {w: i for i, w in enumerate("[PAD] [UNK] [CLS] [SEP] the cat a dog sat".split())}
  tk = Tokenizer(tm.WordLevel(vocab, unk_token="[UNK]"))
  tk.normalizer = normalizers.Lowercase()
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  enc = SentenceEncoder(tiny[1], tk, max_seq_length=40)
  texts = ["The cat", "the  cat", "a dog sat", "THE CAT", "the cat sat", "a dog sat"]
  rows = []
  embed = enc._embed
  enc._embed = lambda ids, mask: rows.append(int((mask.sum(1) > 0).sum())) or embed(ids, mask)
  got = enc.encode(texts)
  assert rows == [3]  # three distinct token sequences, one call
  alone = np.concatenate([enc.encode([t]) for t in texts])
  assert np.abs(got - alone).max() <= TOL
  assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[3])
  assert np.abs(got[0] - got[4]).max() > 1e-3  # and distinct texts stay distinct
