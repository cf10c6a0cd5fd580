#!/usr/bin/env bash
# The main job on the embedded default. Sets itself up on first use; extra args go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh ""
python -m tapper_jax.generate --config=configs/generate.py --workdir="${WORKDIR:-workdir/demo}" "$@"
