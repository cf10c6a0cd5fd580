#!/usr/bin/env bash
# Installs what the tests need (torch CPU, transformers, peft) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh dev
# The default suite leaves out tests marked slow (real-model parity, multi-process runs, the
# real-data loop benchmark, every other test over a minute on 2 cores) and stays under 15
# minutes; `bash launch/test.sh -m slow` runs those, `-m ""` everything.
if [[ " $* " == *" -m "* ]]; then
  python -m pytest -q tests "$@"
else
  python -m pytest -q tests -m "not slow" "$@"
fi
