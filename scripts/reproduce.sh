#!/usr/bin/env bash
# The main job: set up, train the cpu-fast preset on CVC-ClinicDB, evaluate its test side, print the table.
# DATA (default ../shared/data/cvc-clinicdb) and RUN (default runs/cpu-fast) can be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all
DATA="${DATA:-../shared/data/cvc-clinicdb}"
RUN="${RUN:-runs/cpu-fast-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/polypseg data check "$DATA"
.venv/bin/polypseg reproduce --preset cpu-fast --data "$DATA" -o "$RUN" "$@"
