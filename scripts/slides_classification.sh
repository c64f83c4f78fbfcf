#!/usr/bin/env bash
# Nested CV of every (task x encoder x head), as the reference's scripts/slides_classification.sh,
# then one results table. Edit the lists below; each task needs a cohort CSV and, per encoder,
# a features folder <FEATURES_ROOT>/<encoder>/<tiling>/ (see `wsi-mil extract`).
#
#   FEATURES_ROOT=/data/features COHORTS_DIR=/data/cohorts OUTPUT_DIR=/data/runs N_JOBS=8 \
#     bash scripts/slides_classification.sh
set -euo pipefail

FEATURES_ROOT=${FEATURES_ROOT:?set FEATURES_ROOT (folder of <encoder>/<tiling>/ feature folders)}
COHORTS_DIR=${COHORTS_DIR:?set COHORTS_DIR (folder of <task>.csv cohort tables)}
OUTPUT_DIR=${OUTPUT_DIR:-runs}
TILING=${TILING:-mpp0.50_px224}
N_JOBS=${N_JOBS:-4}
EXTRA=("$@")                                  # extra overrides, e.g. epochs=20 n_tiles=500

# task name -> task type (classification | survival); cohort CSV = $COHORTS_DIR/<task>.csv
declare -A TASKS=(
  [camelyon16_tumor]=classification
  [tcga_crc_msi]=classification
  [tcga_nsclc_subtype]=classification
  [tcga_brca_os]=survival
)
ENCODERS=(${ENCODERS:-phikon uni histo_stats})
HEADS=${HEADS:-meanpool,chowder,abmil,dsmil,transmil,hipt_mil}

for task in "${!TASKS[@]}"; do
  for encoder in "${ENCODERS[@]}"; do
    features="$FEATURES_ROOT/$encoder/$TILING"
    if [[ ! -d "$features" ]]; then
      echo "skip $task x $encoder: no $features" >&2
      continue
    fi
    # one Hydra multirun per (task, encoder): one run per head
    wsi-mil cv -m "model=$HEADS" \
      task="${TASKS[$task]}" task_name="$task" encoder="$encoder" \
      cohort="$COHORTS_DIR/$task.csv" features_dir="$features" output_dir="$OUTPUT_DIR" \
      n_jobs="$N_JOBS" "${EXTRA[@]}"
  done
done

wsi-mil results runs_dir="$OUTPUT_DIR"
