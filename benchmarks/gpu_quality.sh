#!/usr/bin/env bash
# The quality benchmark at the paper's recipe (`--budget=full`, lengths in epochs) on one GPU, row
# by row under a time budget: stage 1 + TAP-PER (with its no-personal-input and other-user
# controls) first, then the step-matched control, then the non-personalized model trained as long.
# Each invocation resumes the rows already run (their summary.json) and rewrites the table, and
# the table so far is copied into OUT after each, so a run cut by the budget keeps what finished.
# Usage: bash benchmarks/gpu_quality.sh OUT [SECONDS_BUDGET] [TASK] [QUALITY FLAGS...]
#   e.g. bash benchmarks/gpu_quality.sh /tmp/out 450 huffpost_2N --raw_data=/tmp/raw
set -u
OUT=${1:?usage: gpu_quality.sh OUT [SECONDS_BUDGET] [TASK] [FLAGS...]}
BUDGET=${2:-450}
TASK=${3:-huffpost_2N}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$OUT"
WORK=${GPU_QUALITY_WORK:-/tmp/gpu_quality}  # runs and checkpoints (too deep for OUT)
# The benchmarks import tapper_jax from this checkout (a bare GPU machine has it uninstalled).
PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH PYTHONUNBUFFERED=1
# Rows of the same shapes (the two controls) reuse each other's compiled steps.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# Row groups, run in order, each a quality.py --rows filter ("none" matches no row name:
# TAP-PER alone, which always runs); GPU_QUALITY_ROWS="g1|g2|..." picks others, e.g. the
# ablations: "without P_u|without P_u,without P_q|...". The last group's table is the report.
IFS='|' read -r -a GROUPS_ <<< "${GPU_QUALITY_ROWS:-none|step-matched|step-matched,trained as long}"
# Each group's table is also kept as quality_full_gN.md, so groups that do not repeat the
# earlier ones' rows lose none of them.
n=0
for rows in "${GROUPS_[@]}"; do
  n=$((n + 1))
  if (( $(left) < 30 )); then echo "## rows $rows: skipped ($(left) s left)"; break; fi
  echo "## rows: $rows ($(date +%T), $(left) s left)"
  timeout "$(left)" python3 benchmarks/quality.py --budget=full --only_tasks="$TASK" \
    --rows="$rows" --output="$WORK/out" --offline="$WORK/offline" "$@" 2>&1 \
    | grep -v -E "^(WARNING|I[0-9]{4}|W[0-9]{4})" | tail -30
  echo "## rows $rows: exit ${PIPESTATUS[0]} after $(( $(date +%s) - START )) s"
  cp "$WORK"/out/quality_full.md "$WORK"/out/quality_full.json "$OUT"/ 2>/dev/null \
    && cp "$WORK"/out/quality_full.md "$OUT/quality_full_g$n.md"
done
