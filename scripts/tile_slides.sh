#!/usr/bin/env bash
# Tile every cohort folder under $DATA into $OUT (one tiling root per cohort).
# Usage: DATA=/data/slides OUT=/data/tiles scripts/tile_slides.sh [cohort ...] [-- key=value ...]
# Without cohort names, every sub-folder of $DATA is a cohort. Extra Hydra overrides after `--`.
set -euo pipefail
DATA=${DATA:?set DATA to the folder holding one sub-folder of slides per cohort}
OUT=${OUT:?set OUT to the output folder}
cohorts=()
while [[ $# -gt 0 && "$1" != "--" ]]; do cohorts+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
if [[ ${#cohorts[@]} -eq 0 ]]; then
  for d in "$DATA"/*/; do cohorts+=("$(basename "$d")"); done
fi
status=0
for cohort in "${cohorts[@]}"; do
  echo "== tiling cohort $cohort"
  wsi-mil tile slides="$DATA/$cohort" output_dir="$OUT/$cohort" "$@" || status=1
done
exit $status
