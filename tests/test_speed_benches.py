"""The speed benchmarks run (at a tiny size, on this CPU) and what they compare is the same work:
the serving benchmark's two sides generate the same tokens from the same exported model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, tmp_path, *args):
  env = {**os.environ, "TAPPER_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script),
                      f"--out={tmp_path}", *args], capture_output=True, text=True, env=env,
                     cwd=REPO, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


def test_serving_bench_sides_generate_identical_tokens_for_mixed_users(tmp_path):
  out = _run("serving.py", tmp_path, "--model=random:tiny", "--batches=1,5", "--prompt_len=24",
             "--new_tokens=6", "--repeats=1", "--users=7", "--history=5")
  with open(tmp_path / "serving.json") as f:
    res = json.load(f)
  assert [r["batch"] for r in res["rows"]] == [1, 5]
  for r in res["rows"]:  # fp32, same files: the PyTorch rebuild and ours agree token for token
    assert r["rows_identical"] == r["batch"], r
    assert r["jax_tokens_per_s"] > 0 and r["torch_tokens_per_s"] > 0
  assert "| 5 |" in out


@pytest.mark.slow  # a benchmark's smoke run: the default suite stays under 15 min
def test_train_step_bench_reports_both_sides_and_flops(tmp_path):
  _run("train_step.py", tmp_path, "--model=random:tiny", "--batch=2", "--seq=16", "--steps=1",
       "--history=3", "--users=5")
  with open(tmp_path / "train_step_random_tiny_float32.json") as f:
    res = json.load(f)
  j, t = res["results"]["jax"], res["results"]["torch"]
  # A sanity check only (random weights: both near ln(vocab)); parity is tested elsewhere.
  assert abs(j["loss"] - t["loss"]) < 0.05 * t["loss"], (j["loss"], t["loss"])
  assert j["model_flops"] > 0 and res["speedup_vs_torch"] > 0
  # Padded rows on both sides, and ours unpadded beside our padded step.
  out = _run("train_step.py", tmp_path, "--model=random:tiny", "--batch=4", "--seq=16",
             "--steps=1", "--history=3", "--users=5", "--real_share=0.75", "--unpad=8")
  with open(tmp_path / "train_step_random_tiny_float32_real75_unpad8.json") as f:
    res = json.load(f)
  j, t = res["results"]["jax"], res["results"]["torch"]
  assert res["real_tokens"] < 4 * (16 + 8) and "| jax, unpadded (8) |" in out
  assert abs(j["loss"] - t["loss"]) < 0.05 * t["loss"], (j["loss"], t["loss"])
  assert abs(j["unpad_loss"] - t["loss"]) < 0.05 * t["loss"] and res["unpad_speedup"] > 0


def test_history_attention_bench_runs_every_chunk(tmp_path):
  _run("history_attention.py", tmp_path, "--records=70", "--batches=2", "--widths=16",
       "--chunks=32,128", "--repeats=2")
  with open(tmp_path / "history_attention.json") as f:
    res = json.load(f)
  (row,) = res["rows"]
  assert set(row["ours_ms"]) == {"32", "128"} and row["torch_ms"] > 0


@pytest.mark.slow
def test_users_scale_bench_times_each_table_mode(tmp_path):
  _run("users_scale.py", tmp_path, "--users=50,500", "--steps=1", "--seq=16", "--history=4")
  with open(tmp_path / "users_scale.json") as f:
    res = json.load(f)
  assert [r["users"] for r in res["rows"]] == [50, 500]
  r = res["rows"][1]
  assert r["dense_s"] > 0 and r["sparse_s"] > 0 and r["host_s"] > 0
  assert r["table_mb"] > res["rows"][0]["table_mb"]
  # The host table's device state holds no table: smaller than the device table alone.
  assert r["host_state_mb"] < r["table_mb"] < r["sparse_state_mb"]
  assert r["host_table_mb"] >= 3 * r["table_mb"]  # the table and its two moments
  # The largest table went through a checkpoint and came back equal (rows the steps updated too).
  ck = r["checkpoint"]
  assert ck["restored_equal"] and ck["rows_updated"] > 0 and ck["disk_mb"] > r["table_mb"]
  assert res["computed"]["Llama-3.1-8B"]["500"]["table_gb"] == 500 * 8 * 4096 * 4 / 1e9


@pytest.mark.slow  # a benchmark's smoke run: the default suite stays under 15 min
def test_mfu_sweep_runs_each_variant_and_compares_with_the_reference(tmp_path):
  _run("mfu_sweep.py", tmp_path, "--model=random:tiny", "--dtype=float32", "--attention=einsum",
       "--batch=2", "--seq=16", "--steps=1", "--variants=base,batch2x,profile,unroll_dots")
  with open(tmp_path / "mfu_sweep_random_tiny_float32.json") as f:
    res = json.load(f)
  assert res["reference"] == "base"
  assert set(res["variants"]) == {"base", "batch2x", "profile", "unroll_dots"}
  base, big = res["variants"]["base"], res["variants"]["batch2x"]
  assert "--batch=4" in big["args"] and big["model_flops"] == 2 * base["model_flops"]
  assert {"--scan_unroll=0", "--remat=dots"} <= set(res["variants"]["unroll_dots"]["args"])
  profile = res["variants"]["profile"]["profile"]["kernels"]
  assert profile["total_ms"] > 0 and profile["top"]


def test_trace_summary_sums_a_gpu_trace_by_kernel_and_kind(tmp_path):
  """Kernel events of the GPU's streams are summed per step by name and kind; the derived
  lines (XLA Ops, Modules) and the host are not counted with them."""
  import gzip
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import trace_summary
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
          {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
          {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
          {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Modules"}},
          {"ph": "M", "pid": 2, "tid": 3, "name": "thread_name", "args": {"name": "python"}}]
  x = lambda pid, tid, name, us: {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": 0,  # noqa: E731
                                  "dur": us}
  events = meta + [x(1, 7, "nvjet_sm90_gemm", 3000), x(1, 7, "nvjet_sm90_gemm", 1000),
                   x(1, 7, "cudnn_sdpa_flash_fprop", 2000), x(1, 7, "memcpy128", 500),
                   x(1, 7, "loop_add_fusion", 500), x(1, 8, "fusion.1", 9000),
                   x(1, 9, "jit_step", 99000), x(2, 3, "PjitFunction", 50000)]
  folder = tmp_path / "plugins" / "profile" / "run"
  folder.mkdir(parents=True)
  with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  s = trace_summary.summarize(str(tmp_path), steps=2)
  assert s["total_ms"] == pytest.approx(3.5)  # (3 + 1 + 2 + 0.5 + 0.5) ms over 2 steps
  assert {k: round(v["ms"], 3) for k, v in s["kinds"].items()} == {
      "matmul": 2.0, "attention": 1.0, "other": 0.5}
  top = s["top"][0]
  assert (top["name"], top["count"], top["ms"]) == ("nvjet_sm90_gemm", 1, 2.0)
  ops = trace_summary.summarize(str(tmp_path), steps=2, line="ops")
  assert ops["total_ms"] == pytest.approx(4.5) and ops["top"][0]["name"] == "fusion.1"


def test_train_loop_settings_name_the_trim_the_grouping_unpadding_and_micro_batches(tmp_path):
  # Its own process: train_loop.py's absl flags would clash with another benchmark's here.
  code = ("import train_loop as t; print([t.setting(n) for n in "
          "('full', 'trim16', 'trim16_grouped', 'trim8_grouped50', 'full_unpad64', "
          "'trim16_grouped_unpad8', 'trim16_micro2')])")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     cwd=os.path.join(REPO, "benchmarks"), timeout=120)
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stdout.strip() == ("[(0, 0, 0, 1), (16, 0, 0, 1), (16, 8, 0, 1), (8, 50, 0, 1), "
                              "(0, 0, 64, 1), (16, 8, 8, 1), (16, 0, 0, 2)]")
  for bad in ("trim16_groupd", "full_unpad0", "trim16_micro1", "trim16_unpad8_micro2"):
    # refused before any model loads
    with pytest.raises(AssertionError, match=bad):
      _run("train_loop.py", tmp_path, "--offline=nowhere", f"--settings=full,{bad}")


@pytest.mark.slow
def test_train_loop_bench_times_the_real_loop_against_its_bare_step(tmp_path, shared_data):
  """On a real offline task (tiny random model): each setting's loop time per real token against
  its bare step, and grouping by length leaves a larger share of real tokens than no trim."""
  from tapper_jax.data import build_offline
  offline = tmp_path / "offline"
  build_offline.build(shared_data, str(offline))
  out = _run("train_loop.py", tmp_path, f"--offline={offline}", "--task=huffpost_2N",
             "--model=tiny-random", "--steps=6", "--batch=4", "--repeats=1",
             "--settings=full,trim16_grouped,trim8_grouped3,trim16_unpad32,trim16_micro2")
  with open(tmp_path / "train_loop_huffpost_2n.json") as f:
    res = json.load(f)
  full, grouped, fine, unpadded, micro = res["rows"]
  assert (full["setting"], grouped["setting"]) == ("full", "trim16_grouped")
  assert full["widths"] == [168] and all(w % 16 == 0 and w <= 168 for w in grouped["widths"])
  assert (fine["bucket"], fine["groups"]) == (8, 3)
  assert fine["widths"] and all(w % 8 == 0 and w <= 168 for w in fine["widths"])
  assert grouped["real_token_share"] > full["real_token_share"]
  assert (unpadded["bucket"], unpadded["unpad"]) == (16, 32)
  assert (micro["bucket"], micro["micro_batches"]) == (16, 2)
  assert micro["real_token_share"] > full["real_token_share"]
  assert all(r["ratio"] > 0 and r["steady_steps"] > 0 for r in res["rows"]) and "| full |" in out
  for r in res["rows"]:  # per computed token = per real token x the real share
    np.testing.assert_allclose(r["slot_ratio"], r["ratio"] * r["real_token_share"], rtol=1e-9)


def test_cpu_matmul_bench_compares_both_dtypes_on_both_sides(tmp_path):
  out = _run("cpu_matmul.py", tmp_path, "--tokens=16", "--repeats=1")
  with open(tmp_path / "cpu_matmul.json") as f:
    res = json.load(f)
  assert len(res["rows"]) == 4 and "| down 1536x576 |" in out
  for r in res["rows"]:
    for dtype, tol in (("float32", 1e-2), ("bfloat16", 2.0)):  # the same product, each side
      d = r[dtype]
      assert d["xla_gflops"] > 0 and d["torch_gflops"] > 0
      assert d["xla_max_err"] < tol and d["torch_max_err"] < tol, (dtype, d)
    assert r["float32"]["callback_gflops"] > 0 and r["float32"]["callback_max_err"] < 1e-2
