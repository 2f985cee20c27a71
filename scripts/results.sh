#!/usr/bin/env bash
# Train and evaluate every row of docs/results.md, one after the other (about 3.5 hours on 2 CPU cores).
# Each row is one `polypseg reproduce` command; the table is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data/cvc-clinicdb}"
OUT="${OUT:-runs/results}"
mkdir -p "$OUT"
r() { name=$1; shift; [ -f "$OUT/$name/eval-test/summary.json" ] && return 0
      .venv/bin/polypseg reproduce --data "$DATA" -o "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || echo "failed: $name"; }
# The main job: the cpu-fast preset as it stands (40 epochs).
r lite0-sequence-e40 --preset cpu-fast
# The first rows ran the preset's earlier 20 epochs.
r lite0-sequence  --preset cpu-fast --epochs 20 --choose-threshold
r lite0-random    --preset cpu-fast --epochs 20 --split-strategy random
r lite0-pranet    --preset cpu-fast --epochs 20 --split-strategy pranet
r unet-lite0-sequence --preset cpu-fast --epochs 20 --arch unet --choose-threshold
r lite2-sequence  --preset cpu-fast --epochs 20 --encoder tu-tf_efficientnet_lite2 --choose-threshold
# ResNet-50 has no ImageNet weights offline: from scratch, and 10 epochs (it is 2.6x slower per image).
r resnet50-scratch-sequence --preset cpu-fast --encoder resnet50 --encoder-weights none --epochs 10 --choose-threshold
# 5 folds train on about 430 frames each: 10 epochs (about as many steps as 20 on 244 frames) keeps the
# five within about an hour.
for f in 0 1 2 3 4; do r lite0-kfold$f --preset cpu-fast --split-strategy kfold --fold $f --epochs 10 --choose-threshold; done
.venv/bin/python scripts/results_table.py "$OUT"/*/
