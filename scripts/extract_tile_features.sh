#!/usr/bin/env bash
# Extract tile-level features for every dataset x encoder.
# Usage: DATA=/data/tile_datasets OUT=/data/tile_features ENCODERS="histo_stats phikon" \
#        scripts/extract_tile_features.sh [dataset ...] [-- key=value ...]
# Each dataset is a folder of class sub-folders (NCT-CRC-HE-100K layout) under $DATA, or a
# CSV ($DATA/<name>.csv with columns path,label). Outputs:
#   $OUT/<encoder>/<dataset>/tile_features.npy, tile_ids.npy, tile_labels.npy
set -euo pipefail
DATA=${DATA:?set DATA to the folder holding the tile datasets}
OUT=${OUT:?set OUT to the output folder}
ENCODERS=${ENCODERS:-histo_stats}
datasets=()
while [[ $# -gt 0 && "$1" != "--" ]]; do datasets+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
if [[ ${#datasets[@]} -eq 0 ]]; then
  for d in "$DATA"/*/ "$DATA"/*.csv; do [[ -e "$d" ]] && datasets+=("$(basename "$d")"); done
fi
status=0
for dataset in "${datasets[@]}"; do
  for encoder in $ENCODERS; do
    echo "== $dataset x $encoder"
    wsi-mil extract-tiles dataset="$DATA/$dataset" dataset_name="${dataset%.csv}" \
      output_dir="$OUT" encoder="$encoder" "$@" || status=1
  done
done
exit $status
