"""TFDS ArrayRecord builder for LaMP folders and the grain pipeline (state save/restore)."""

import json

import numpy as np
import pytest

from lamp_fixtures import write_task
from tapper_jax.data import synthetic
from tapper_jax.data.pipeline import make_dataset
from tapper_jax.data.prompts import PLAIN_SUFFIX, PromptFormat
from tapper_jax.data.tfds_lamp import LampBuilder


class CharTokenizer:
  """Bytes as tokens: enough to test padding and masks without a model."""
  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [b + 2 for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(i - 2 for i in ids).decode("utf-8", "ignore")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  folder = str(root / "synthetic_drift")
  synthetic.generate(folder, num_users=6, items_per_user=10, seed=1)
  builder = LampBuilder(lamp_folder=folder, data_dir=str(root / "data"))
  builder.download_and_prepare()
  return builder


def test_builder_writes_array_record_and_reads_back(source):
  assert set(source.info.splits.keys()) == {"train", "dev", "test"}
  test = source.as_data_source(split="test")
  assert len(test) == 6
  ex = test[0]
  profile = json.loads(ex["profile_json"])
  assert profile and [p["date"] for p in profile] == sorted(p["date"] for p in profile)
  assert ex["target"] and ex["query"] and ex["query"] in ex["input"]  # Text features come back as bytes


def test_grain_batches_masks_and_resumes(source):
  train = source.as_data_source(split="train")
  tok = CharTokenizer()
  fmt = PromptFormat(tok, 88)

  def make(seed):
    return make_dataset(train, fmt, max_target_tokens=24, batch_size=4, seed=seed)

  ds = make(7)
  it = iter(ds)
  first = next(it)
  assert first["input_ids"].shape == (4, 112) and first["loss_mask"].dtype == np.int32
  for row in range(4):
    ex = train[int(first["index"][row])]
    tgt = tok.encode(" " + ex["target"].decode()) + [tok.eos_id]
    ids, loss = first["input_ids"][row], first["loss_mask"][row]
    assert list(ids[loss == 1]) == tgt  # loss only on the target and EOS
    assert list(ids[first["target_pos"][row][first["target_valid"][row] == 1]]) == tgt
    assert first["attention_mask"][row].sum() == (ids != 0).sum()
  state = it.get_state()
  expected = [next(it)["index"].tolist() for _ in range(3)]
  it2 = iter(make(7))
  it2.set_state(state)
  assert [next(it2)["index"].tolist() for _ in range(3)] == expected
  other = next(iter(make(8)))
  assert other["index"].tolist() != first["index"].tolist()  # the seed matters


def test_a_long_input_is_shortened_inside_its_text_never_the_instruction_or_the_target():
  tok = CharTokenizer()
  head = "Pick one of [a, b]. text: "
  src = [{"input": head + "x" * 200, "target": "keep me", "keep": len(head)},
         {"input": "short", "target": "a much longer target", "keep": 0}]
  batch = next(iter(make_dataset(src, PromptFormat(tok, 40), max_target_tokens=12,
                                 batch_size=2, shuffle=False)))
  ids = batch["input_ids"][0]
  prompt = tok.decode(ids[(batch["attention_mask"][0] == 1) & (batch["loss_mask"][0] == 0)])
  assert prompt == head + "x" * (40 - len(head) - len(PLAIN_SUFFIX)) + PLAIN_SUFFIX
  assert list(ids[batch["loss_mask"][0] == 1]) == tok.encode(" keep me") + [1]
  assert batch["shortened"].tolist() == [1, 0]
  # A target over its budget loses its end and its EOS, and is flagged to be counted.
  assert batch["target_cut"].tolist() == [0, 1]
  assert batch["target_valid"][1].sum() == 12 and 1 not in batch["input_ids"][1]
