#!/usr/bin/env bash
# The GPU run (issues 17 and 31): install what is missing, train both models from ImageNet weights with the
# quiet-at-every-hospital recipe (`realtime-hospitals-gpu`: Lite0 224x288, 48 epochs; `accurate-hospitals-gpu`:
# Lite2 352x448, 40 epochs; polyp-free frames of every hospital with masks, hospital artefacts as augmentation,
# the logit verdict), evaluate them on the PraNet test sets and polypgen-centre-a, and time every model on the
# GPU (torch eager fp32 / fp16 autocast and ONNX Runtime's CUDA provider, batch 1 and 16), all into one
# results folder. About 8-10 minutes on one H200 (each recipe about 3.5 minutes, bound by data loading).
#
#   scripts/gpu.sh [-o OUT] [--epochs N]   on a machine with a CUDA GPU (default OUT: gpu-results)
#   scripts/gpu.sh --smoke -o OUT          every step end to end on the CPU with a tiny model (CI)
#
# Environment: PYTHON (default .venv/bin/python, else python3); WHEELS, a folder of wheels to install
# offline (pip --no-index --find-links); POLYPSEG_DATA, the data folder (default ../shared/data, with
# cvc-clinicdb/, kvasir-seg/, hyperkvasir-negatives/ and, for the check, polypgen-centre-a/). OUT appears only when every step has finished (OUT.partial until then,
# with gpu.log); a failed step stops the script with its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 out=gpu-results epochs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    -o|--output) out="${2:?-o needs a folder}"; shift ;;
    --epochs) epochs="${2:?--epochs needs a number}"; shift ;;
    -h|--help) sed -n 2,12p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown option '$1' (see scripts/gpu.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -e "$out" ]; then
  echo "gpu.sh: '$out' already exists; choose a new results folder with -o" >&2
  exit 2
fi
py="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
data="${POLYPSEG_DATA:-../shared/data}"
tmp="$out.partial"
rm -rf "$tmp" && mkdir -p "$tmp"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$tmp/gpu.log"; }
step() { log "$ $*"; "$@" 2>&1 | tee -a "$tmp/gpu.log"; }

# 1. What is missing, installed (a GPU machine's own torch is kept: pyproject gives ranges, not pins).
if ! "$py" -c "import polypseg, segmentation_models_pytorch, albumentations, py_sod_metrics, onnxruntime" 2>/dev/null; then
  if [ -n "${WHEELS:-}" ]; then
    step "$py" -m pip install --quiet --no-index --find-links "$WHEELS" -e ".[weights,onnx]"
  else
    step "$py" -m pip install --quiet -e ".[weights,onnx]"
  fi
fi
step "$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); print('onnxruntime', o.__version__, o.get_available_providers())"

# 2. Both recipes at their full size (smoke: a tiny random network, two batches, on CVC-ClinicDB alone).
neg=(--negatives "$data/hyperkvasir-negatives")
if [ "$smoke" = 1 ]; then
  tiny=(--data "$data/cvc-clinicdb" --encoder tu-test_efficientnet --encoder-weights none --height 64 --width 96
        --batch-size 2 --epochs 1 --limit-batches 2 --num-workers 0 --accelerator cpu)
  realtime=(--preset realtime-hospitals-gpu "${tiny[@]}" "${neg[@]}")
  accurate=(--preset accurate-hospitals-gpu "${tiny[@]}" "${neg[@]}")
  sets=(--test-set "$data/cvc-clinicdb:test")
  timing=(--device cpu --batch 1 2 --iterations 2 --warmup 1)
else
  both=(--data "$data/cvc-clinicdb" --data "$data/kvasir-seg" "${neg[@]}" ${epochs:+--epochs "$epochs"})
  realtime=(--preset realtime-hospitals-gpu "${both[@]}")
  accurate=(--preset accurate-hospitals-gpu "${both[@]}")
  sets=(--test-set "$data/cvc-clinicdb:test" --test-set "$data/kvasir-seg:test")
  [ -d "$data/polypgen-centre-a" ] && sets+=(--test-set "$data/polypgen-centre-a")
  timing=(--device cuda --batch 1 16)
fi
for name in realtime accurate; do
  declare -n recipe="$name"
  step "$py" -m polypseg train "${recipe[@]}" -o "$tmp/$name-gpu"
  step "$py" -m polypseg evaluate --run "$tmp/$name-gpu" "${sets[@]}" -o "$tmp/$name-gpu-eval"
done

# 3. Every model timed on the device: the shipped ones and the two just trained.
step "$py" benchmarks/bench_models.py realtime accurate "$tmp/realtime-gpu" "$tmp/accurate-gpu" "${timing[@]}" -o "$tmp"

log "done: results in $out"
mv "$tmp" "$out"
