#!/usr/bin/env bash
# Extract slide features for every cohort x encoder.
# Usage: DATA=/data/slides TILES=/data/tiles OUT=/data/features \
#        ENCODERS="histo_stats phikon uni" [TILING=mpp0.50_px224] [NPROC=1] \
#        scripts/extract_slide_features.sh [cohort ...] [-- key=value ...]
# Slides of cohort C are in $DATA/C, its coords in $TILES/C/$TILING (scripts/tile_slides.sh).
# Features go to $OUT/C/<encoder>/$TILING/<slide_id>.h5. NPROC>1 runs one process per GPU:
#   torchrun --nproc_per_node=$NPROC -m wsi_mil.cli.main extract ...
# (multi-node: add --nnodes/--node_rank/--rdzv_endpoint through TORCHRUN_ARGS).
set -euo pipefail
DATA=${DATA:?set DATA to the folder holding one sub-folder of slides per cohort}
TILES=${TILES:?set TILES to the tiling output folder (one sub-folder per cohort)}
OUT=${OUT:?set OUT to the features output folder}
ENCODERS=${ENCODERS:-histo_stats}
TILING=${TILING:-mpp0.50_px224}
NPROC=${NPROC:-1}
cohorts=()
while [[ $# -gt 0 && "$1" != "--" ]]; do cohorts+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
if [[ ${#cohorts[@]} -eq 0 ]]; then
  for d in "$DATA"/*/; do cohorts+=("$(basename "$d")"); done
fi
if [[ "$NPROC" -gt 1 ]]; then
  # shellcheck disable=SC2206
  launcher=(torchrun --nproc_per_node="$NPROC" ${TORCHRUN_ARGS:-} -m wsi_mil.cli.main extract)
else
  launcher=(wsi-mil extract)
fi
status=0
for cohort in "${cohorts[@]}"; do
  for encoder in $ENCODERS; do
    echo "== $cohort x $encoder"
    "${launcher[@]}" slides="$DATA/$cohort" coords_dir="$TILES/$cohort/$TILING" \
      output_dir="$OUT/$cohort" encoder="$encoder" cohort="$cohort" "$@" || status=1
  done
done
exit $status
