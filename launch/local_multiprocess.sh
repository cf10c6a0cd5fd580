#!/usr/bin/env bash
# N JAX processes on this machine (127.0.0.1, CPU, D fake devices each), one training run:
# how a multi-host job behaves, without the hosts. Output of process I: WORKDIR/process_I.log.
#   bash launch/local_multiprocess.sh [--dry-run] N D WORKDIR [train flags...]
# e.g. bash launch/local_multiprocess.sh 2 2 /tmp/mp --config=configs/synthetic.py:tiny \
#        --config.stage=2 --config.evaluate=False
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
N=${1:?usage: local_multiprocess.sh [--dry-run] N DEVICES_PER_PROCESS WORKDIR [flags...]}
D=${2:?devices per process}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PY=${PYTHON:-python3}
cmds=()
for ((i = 0; i < N; i++)); do
  cmds+=("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$D $PY -m tapper_jax.train --workdir=$WORKDIR --coordinator=127.0.0.1:$PORT --num_processes=$N --process_id=$i $*")
done
if ((DRY)); then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < N; i++)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D" \
    "$PY" -m tapper_jax.train --workdir="$WORKDIR" --coordinator="127.0.0.1:$PORT" \
    --num_processes="$N" --process_id="$i" "$@" >"$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for ((i = 0; i < N; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $WORKDIR/process_$i.log" >&2
    status=1
  fi
done
exit $status
