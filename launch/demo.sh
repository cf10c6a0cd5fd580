#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct on SYNTHETIC LaMP-format data,
# stage 1 + stage 2 + evaluation (about 10 minutes on 2 CPU cores), ending with a table of the
# non-personalized model against TAP-PER. Sets itself up on first use; extra args go to the job
# (e.g. --config.stage2.steps=120). Re-running with the same WORKDIR resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh ""
python -m tapper_jax.train --config=configs/synthetic.py --workdir="${WORKDIR:-workdir/demo}" "$@"
