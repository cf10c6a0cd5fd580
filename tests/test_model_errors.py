"""Bad model inputs give one clear error naming the file and tensor/field; nothing half-written."""

import json
import os
import shutil

import numpy as np
import pytest

from tapper_jax.models import ConfigError, TokenizerError, Tokenizer, WeightsError, load_pretrained
from tapper_jax.models import registry
from tapper_jax.models.gguf_convert import GGUFError, convert_gguf

torch = pytest.importorskip("torch")
from hf_tiny import make_hf


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("good"))
  make_hf("llama_gqa_untied", folder)
  return folder


def _copy(good, tmp_path):
  d = str(tmp_path / "m")
  shutil.copytree(good, d)
  return d


def test_missing_weight_file(good, tmp_path):
  d = _copy(good, tmp_path)
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(WeightsError, match=r"m: no model\.safetensors"):
    load_pretrained(d)


def test_truncated_weight_file(good, tmp_path):
  d = _copy(good, tmp_path)
  f = os.path.join(d, "model.safetensors")
  data = open(f, "rb").read()
  open(f, "wb").write(data[: len(data) // 2])
  with pytest.raises(WeightsError, match=r"model\.safetensors: cannot read"):
    load_pretrained(d)


def test_missing_tensor_is_named(good, tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy(good, tmp_path)
  f = os.path.join(d, "model.safetensors")
  t = load_file(f)
  del t["model.layers.1.self_attn.k_proj.weight"]
  save_file(t, f)
  with pytest.raises(WeightsError, match=r"model\.safetensors: tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' missing"):
    load_pretrained(d)


def test_mismatched_tensor_shape_is_named(good, tmp_path):
  d = _copy(good, tmp_path)
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg["intermediate_size"] = 120
  json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(WeightsError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \(64, 112\), config\.json expects \(64, 120\)"):
    load_pretrained(d)


def test_sharded_index_pointing_at_missing_shard(good, tmp_path):
  d = _copy(good, tmp_path)
  from safetensors.numpy import load_file
  names = load_file(os.path.join(d, "model.safetensors")).keys()
  os.remove(os.path.join(d, "model.safetensors"))
  json.dump({"weight_map": {n: "model-00001-of-00002.safetensors" for n in names}},
            open(os.path.join(d, "model.safetensors.index.json"), "w"))
  with pytest.raises(WeightsError, match=r"model-00001-of-00002\.safetensors: missing \(named by"):
    load_pretrained(d)


def test_unknown_architecture(good, tmp_path):
  d = _copy(good, tmp_path)
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
  json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(ConfigError, match=r"config\.json: field 'model_type' = 'gpt2'"):
    load_pretrained(d)


def test_config_not_json(good, tmp_path):
  d = _copy(good, tmp_path)
  open(os.path.join(d, "config.json"), "w").write("{not json")
  with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
    load_pretrained(d)


def test_tokenizer_that_cannot_be_built(tmp_path):
  (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
  with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot build a tokenizer"):
    Tokenizer.from_pretrained(str(tmp_path))
  with pytest.raises(TokenizerError, match=r"tokenizer\.json: missing"):
    Tokenizer.from_pretrained(str(tmp_path / "nowhere"))


def test_bad_gguf_leaves_nothing_behind(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)  # truncated header
  out = tmp_path / "converted"
  with pytest.raises(GGUFError, match=r"bad\.gguf: not a readable GGUF file"):
    convert_gguf(str(bad), str(out))
  assert not out.exists()
  assert [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]  # no temp folder left either


def test_registry_rejects_unknown_names_and_bare_folders(tmp_path):
  with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
    registry.resolve("no-such-model")
  with pytest.raises(FileNotFoundError, match="needs config.json"):
    registry.resolve(str(tmp_path))
