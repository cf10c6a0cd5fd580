#!/usr/bin/env bash
# Installs what the tests need (torch CPU, transformers, peft) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh dev
python -m pytest -q tests "$@"
