#!/usr/bin/env bash
# Linear evaluation of every (tile dataset x encoder), as the reference's scripts/tiles_classification.sh.
# Each dataset needs train (and test) tile features from `wsi-mil extract-tiles`:
#   <FEATURES_ROOT>/<encoder>/<train dataset>/ and <FEATURES_ROOT>/<encoder>/<test dataset>/
#
#   FEATURES_ROOT=/data/tile_features OUTPUT_DIR=/data/runs/tiles bash scripts/tiles_classification.sh
#   PROTOCOL=logreg_cv bash scripts/tiles_classification.sh few_shot.ks=[1,2,4,8,16]
set -euo pipefail

FEATURES_ROOT=${FEATURES_ROOT:?set FEATURES_ROOT (folder of <encoder>/<dataset>/ tile feature folders)}
OUTPUT_DIR=${OUTPUT_DIR:-runs/tiles_classification}
PROTOCOL=${PROTOCOL:-reference}                        # reference | logreg_cv
PORTIONS=${PORTIONS:-[0.001,0.005,0.01,0.05,0.1,0.5,1.0]}
N_BOOTSTRAP=${N_BOOTSTRAP:-1000}
EXTRA=("$@")                                           # extra overrides, e.g. seeds=[0,1,2]

# dataset -> "train folder:test folder:classes to drop"
declare -A DATASETS=(
  [nct_crc]="NCT-CRC-HE-100K:CRC-VAL-HE-7K:[BACK]"
  [camelyon17_wilds]="CAMELYON17-WILDS_TRAIN:CAMELYON17-WILDS_VALID:[]"
)
ENCODERS=(${ENCODERS:-resnet50 ctranspath phikon uni histo_stats})

for dataset in "${!DATASETS[@]}"; do
  IFS=: read -r train test drop <<< "${DATASETS[$dataset]}"
  for encoder in "${ENCODERS[@]}"; do
    train_dir="$FEATURES_ROOT/$encoder/$train"
    test_dir="$FEATURES_ROOT/$encoder/$test"
    if [[ ! -d "$train_dir" || ! -d "$test_dir" ]]; then
      echo "skip $dataset x $encoder: no $train_dir or $test_dir" >&2
      continue
    fi
    wsi-mil linear-probe \
      features_dir="$train_dir" test_features_dir="$test_dir" drop_classes="$drop" \
      protocol="$PROTOCOL" portions="$PORTIONS" n_bootstrap="$N_BOOTSTRAP" \
      output_dir="$OUTPUT_DIR/${dataset}_${encoder}" "${EXTRA[@]}"
  done
done
