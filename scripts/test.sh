#!/usr/bin/env bash
# Set up with the test extras and run the test suite (the real CVC-ClinicDB frames are read from
# ../shared/data/cvc-clinicdb, or POLYPSEG_TEST_DATA). The browser tests need /usr/bin/chromium, which
# scripts/setup-browser.sh installs when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all,scale,test
scripts/setup-browser.sh   # Chromium for the browser tests of `polypseg serve`
.venv/bin/python -m pytest "$@"
