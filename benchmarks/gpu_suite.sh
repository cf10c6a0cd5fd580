#!/usr/bin/env bash
# The speed benchmarks on one GPU, in order of value, each under its own time limit, each
# writing its JSON into OUT and its table into OUT/log.txt:
#   serving (mixed-user greedy, ours vs transformers + peft), whole-history attention,
#   the stage-2 train step at SmolLM2-135M and Llama-3.2-1B shapes (random weights, bf16, MFU),
#   padded rows against the unpadded layout (train_step_1b_unpad), and what each lever gives
#   the 1B step's MFU (mfu_sweep).
# Usage: bash benchmarks/gpu_suite.sh OUT [SECONDS_BUDGET] [STEP,STEP,...]  (default: all steps)
set -u
OUT=${1:?usage: gpu_suite.sh OUT [SECONDS_BUDGET] [STEPS]}
BUDGET=${2:-500}
ONLY=${3:-}
mkdir -p "$OUT"
# The benchmarks import tapper_jax from this checkout (a bare GPU machine has it uninstalled).
PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH PYTHONUNBUFFERED=1 TAPPER_JAX_CACHE=${TAPPER_JAX_CACHE:-/tmp/tapper_jax_cache}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {  # step NAME LIMIT COMMAND...: runs COMMAND if LIMIT seconds are left
  local name=$1 limit=$2; shift 2
  if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then return; fi
  if (( $(left) < limit )); then echo "## $name: skipped ($(left) s left, needs $limit)"; return; fi
  echo "## $name ($(date +%T))"
  timeout "$limit" "$@" 2>&1 | grep -v -E "^(WARNING|I[0-9]{4}|W[0-9]{4})" | tail -40
  echo "## $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - START )) s"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax, torch, transformers, peft; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  step serving 170 python3 benchmarks/serving.py --model=random:smollm2-135m --dtype=bfloat16 \
    --batches=1,8,32 --prompt_len=128 --new_tokens=64 --repeats=3 --out="$OUT"
  step history_attention 60 python3 benchmarks/history_attention.py --records=1000 \
    --batches=1,32 --widths=576,2048 --chunks=64,256,1024 --out="$OUT"
  step train_step_135m 120 python3 benchmarks/train_step.py --model=random:smollm2-135m \
    --dtype=bfloat16 --batch=16 --seq=512 --target=8 --history=32 --steps=10 --out="$OUT"
  step gpu_tests 90 python3 -m pytest -q tests/test_gpu.py
  step train_step_1b_cudnn 200 python3 benchmarks/train_step.py --model=random:llama-3.2-1b \
    --dtype=bfloat16 --attention=cudnn --batch=16 --seq=512 --target=8 --history=32 --steps=10 \
    --out="$OUT"
  step train_step_135m_cudnn 100 python3 benchmarks/train_step.py --model=random:smollm2-135m \
    --dtype=bfloat16 --attention=cudnn --batch=16 --seq=512 --target=8 --history=32 --steps=10 \
    --out="$OUT"
  step users_scale 100 python3 benchmarks/users_scale.py --users=1000,10000,100000,1000000 \
    --out="$OUT"
  step train_step_1b_cudnn_b32_unrolled 150 python3 benchmarks/train_step.py \
    --model=random:llama-3.2-1b --dtype=bfloat16 --attention=cudnn --scan_unroll=0 --batch=32 \
    --seq=512 --target=8 --history=32 --steps=5 --out="$OUT/b32"
  # Padded rows (75% real) against the unpadded layout, in turns on the same batch.
  step train_step_1b_unpad 200 python3 benchmarks/train_step.py \
    --model=random:llama-3.2-1b --dtype=bfloat16 --attention=cudnn --scan_unroll=0 --batch=32 \
    --seq=512 --target=8 --history=32 --steps=5 --real_share=0.75 --unpad=256 --out="$OUT/unpad"
  step mfu_sweep 420 python3 benchmarks/mfu_sweep.py --model=random:llama-3.2-1b \
    --batch=32 --seq=512 --steps=5 --variants=base,unroll,unroll_dots,remat_dots,profile \
    --out="$OUT"
  step train_step_1b 200 python3 benchmarks/train_step.py --model=random:llama-3.2-1b \
    --dtype=bfloat16 --batch=16 --seq=512 --target=8 --history=32 --steps=10 --out="$OUT"
} 2>&1 | tee "$OUT/log.txt"
