"""TFDS ArrayRecord builder for LaMP folders and the grain pipeline (state save/restore)."""

import json

import numpy as np
import pytest

from lamp_fixtures import write_task
from tapper_jax.data import synthetic
from tapper_jax.data.pipeline import make_dataset
from tapper_jax.data.tfds_lamp import LampBuilder


class CharTokenizer:
  """Bytes as tokens: enough to test padding and masks without a model."""
  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [b + 2 for b in text.encode("utf-8")]


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
  ds = make_dataset(train, tok, batch_size=4, max_len=96, seed=7)
  it = iter(ds)
  first = next(it)
  assert first["input_ids"].shape == (4, 96) and first["loss_mask"].dtype == np.int32
  for row in range(4):
    ex = train[int(first["index"][row])]
    tgt = tok.encode(ex["target"].decode()) + [tok.eos_id]
    ids, loss = first["input_ids"][row], first["loss_mask"][row]
    assert list(ids[loss == 1]) == tgt  # loss only on the target and EOS
    assert first["attention_mask"][row].sum() == (ids != 0).sum()
  state = it.get_state()
  expected = [next(it)["index"].tolist() for _ in range(3)]
  it2 = iter(make_dataset(train, tok, batch_size=4, max_len=96, seed=7))
  it2.set_state(state)
  assert [next(it2)["index"].tolist() for _ in range(3)] == expected
  other = next(iter(make_dataset(train, tok, batch_size=4, max_len=96, seed=8)))
  assert other["index"].tolist() != first["index"].tolist()  # the seed matters


def test_prompt_is_cut_from_the_left_never_the_target(tmp_path):
  tok = CharTokenizer()
  src = [{"input": "x" * 200, "target": "keep me"}]
  batch = next(iter(make_dataset(src, tok, batch_size=1, max_len=32, shuffle=False)))
  ids = batch["input_ids"][0]
  assert list(ids[batch["loss_mask"][0] == 1]) == tok.encode("keep me") + [1]
  assert batch["attention_mask"][0].sum() == 32
