#!/usr/bin/env bash
# Create .venv (if missing) and install polypseg with the exact versions in constraints.txt.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh all,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins torch 2.14.1 / torchvision 0.29.1 and the rest of the tested set; pyproject.toml
# only gives ranges, so a user's own CUDA build of torch is kept when installing without it.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
