"""benchmarks/footprint.py: counts from the parameter trees equal the hand formulas."""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _footprint():
  spec = importlib.util.spec_from_file_location("footprint_bench",
                                                os.path.join(REPO, "benchmarks", "footprint.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules["footprint_bench"] = mod
  spec.loader.exec_module(mod)
  return mod


F = _footprint()


def test_counts_equal_hand_formulas():
  res = F.footprint()
  for name, shape in F.SHAPES.items():
    d, n = shape["hidden_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    rows = res[name]["rows"]
    assert rows["TAP-PER"]["per_user"] == F.PREFIX_LEN * d
    oppu = n * 8 * ((d + q) + (d + kv))  # r (in + out) for q and v, every layer
    assert rows["OPPU (LoRA r=8 on q, v)"]["per_user"] == oppu
    bridge = n * 4 * ((d + q) + 2 * (d + kv) + (q + d))
    attention = (4 * d * d + d) + (d + 1) + 2 + (d * F.PREFIX_LEN * d + F.PREFIX_LEN * d)
    assert rows["TAP-PER"]["shared"] == bridge + attention
    pplug = (F.ENCODER_DIM * d + d) + (d * d + d) + d
    assert rows["PPlug"] == {"per_user": 0, "shared": pplug,
                             "total": {str(u): pplug for u in F.USERS}}
    assert rows["TAP-PER"]["total"]["1000"] == bridge + attention + 1000 * F.PREFIX_LEN * d
    per_sharer = n * 8 * ((d + q) + 2 * (d + kv) + (q + d)) + n * (2 * d + 2 * q)  # LoRA + gates
    assert rows["PER-PCS (from its code)"]["shared"] == 50 * per_sharer
    assert rows["PER-PCS (from its code)"]["per_user"] == n * 4 * 3 * 2
  # The paper's two claims, at OPPU's and PER-PCS's own backbone (Llama-2-7B).
  assert round(res["Llama-2-7B"]["oppu_over_tapper_per_user"]) == 128  # "130x"
  assert abs(res["Llama-2-7B"]["tapper_over_perpcs_total_1k"] - 0.53) < 0.01  # "~53%"


def test_smollm2_shape_is_the_shipped_models(model_cache):
  import pytest
  from tapper_jax.models import LlamaConfig, registry
  try:
    folder = registry.resolve("smollm2-135m-instruct")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  cfg = LlamaConfig.from_pretrained(folder)
  for k, v in F.SHAPES["SmolLM2-135M"].items():
    assert getattr(cfg, k) == v, k
