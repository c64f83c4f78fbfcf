#!/usr/bin/env bash
# Two `wsi-mil extract` runs started together on one output folder; prints how often each
# slide was encoded and how many rows status.csv kept.
# Usage: dev_tools/concurrent_extract.sh SLIDES_A.csv SLIDES_B.csv COORDS_DIR OUT
#   same slides:      A = B = the whole table (each slide must be encoded once)
#   disjoint shards:  A, B = two halves (every row must be kept)
set -u
a=$1; b=$2; coords=$3; out=$4
rm -rf "$out"
run() {
  OMP_NUM_THREADS=1 python -m wsi_mil.cli.main extract slides="$1" coords_dir="$coords" \
    output_dir="$out" encoder=histo_stats num_workers=0 device=cpu batch_size=8 \
    log_level=WARNING > /dev/null 2>&1
}
run "$a" & run "$b" & wait
ledger=$(dirname "$(find "$out" -name status.csv | head -n 1)")/status.csv
encodes=$(grep -h -o '[^ ]*: [0-9]* tiles ->' "$out/extract.log" | cut -d: -f1 | sort | uniq -c \
          | awk '{print $1}' | tr '\n' ' ')
echo "encodes per slide: ${encodes}| ledger rows: $(($(wc -l < "$ledger") - 1))"
