#!/usr/bin/env bash
# Set up with the test extras and run the test suite (the real CVC-ClinicDB frames are read from
# ../shared/data/cvc-clinicdb, or POLYPSEG_TEST_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all,test
.venv/bin/python -m pytest "$@"
