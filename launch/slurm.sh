#!/usr/bin/env bash
# A multi-node GPU training run under SLURM: one process per GPU (srun), each joining the run
# by itself (jax.distributed reads SLURM's environment). Writes the batch script to
# WORKDIR/slurm_job.sh and submits it.
#   bash launch/slurm.sh [--dry-run] NODES GPUS_PER_NODE WORKDIR [train flags...]
# e.g. bash launch/slurm.sh 2 8 runs/lamp2 --config=configs/lamp2.py --config.evaluate=False
# A multi-process run trains; evaluate its workdir with python -m tapper_jax.predict.
# Env: PARTITION, TIME (default 04:00:00), VENV (activated in the job, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
NODES=${1:?usage: slurm.sh [--dry-run] NODES GPUS_PER_NODE WORKDIR [train flags...]}
GPUS=${2:?gpus per node}
WORKDIR=${3:?workdir}
shift 3
FLAGS=$(printf ' %q' "$@")
JOB="$WORKDIR/slurm_job.sh"
script="#!/usr/bin/env bash
#SBATCH --job-name=tapper-jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS
#SBATCH --gpus-per-task=1
#SBATCH --time=${TIME:-04:00:00}
#SBATCH --output=$WORKDIR/slurm-%j.log
${PARTITION:+#SBATCH --partition=$PARTITION}
set -euo pipefail
cd $PWD
source ${VENV:-.venv}/bin/activate
srun python3 -m tapper_jax.train --workdir=$WORKDIR$FLAGS"
if ((DRY)); then
  printf '%s\n' "$script" "sbatch $JOB"
  exit 0
fi
mkdir -p "$WORKDIR"
if [[ -e $JOB ]]; then echo "$JOB exists; refusing to overwrite it" >&2; exit 1; fi
printf '%s\n' "$script" >"$JOB"
sbatch "$JOB"
