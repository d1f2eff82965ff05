#!/usr/bin/env bash
# ModelZoo-style single-device training of LMF (lmf_torch_npu) on IEMOCAP:
#
#   bash lmf_torch_npu/scripts/train_full_1p.sh --data_url=DATA_DIR --train_url=OUT_DIR \
#       [--para_path=param_data.csv] [--emotion=neutral] [any lmf_torch_npu.train flag...]
#
# --device=auto: an Ascend NPU when torch_npu and CANN are present (CANN's environment is sourced
# through env_npu.sh), else CUDA, else the CPU. The run lives in OUT_DIR/<emotion>/, the log in
# OUT_DIR/test/output/$ASCEND_DEVICE_ID/, and the script ends with the lines ModelZoo tools parse.
# PYTHON picks the interpreter (default python3). train_performance_1p.sh runs this script with
# LMF_MODELZOO_MODE=performance: a timed --perf_steps run plus a short training.
#
# The 8p scripts (RANK_SIZE, default 8, as LMF_TRIALS) train N independent trials at once
# (seeds --seed .. --seed+N-1, one NPU each, through Ray: lmf_torch_npu.train --num_seeds=N) in
# OUT_DIR/<emotion>-<N>p/. Trials, not data-parallel DDP: an epoch of LMF on IEMOCAP is about 11
# steps at batch size 256, too few to split over N devices. FPS is then the sum of the trials'
# training throughputs, and accuracy and F1 are the model chosen on validation.

set -o pipefail
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
PYTHON=${PYTHON:-python3}
mode=${LMF_MODELZOO_MODE:-full}
export ASCEND_DEVICE_ID=${ASCEND_DEVICE_ID:-0}
rank_size=${LMF_TRIALS:-1}  # set by the 8p scripts; a 1p run ignores RANK_SIZE
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

data_url='' train_url='runs/modelzoo' para_path='' emotion='neutral' perf_steps=100
passed=()
for arg in "$@"; do
  case $arg in
    --data_url=*|--data_path=*) data_url=${arg#*=} ;;
    --train_url=*|--workdir=*) train_url=${arg#*=} ;;
    --para_path=*) para_path=${arg#*=} ;;
    --emotion=*) emotion=${arg#*=} ;;
    --perf_steps=*) perf_steps=${arg#*=} ;;
    *) passed+=("$arg") ;;
  esac
done

if [ -n "${ASCEND_TOOLKIT_HOME:-}" ] || [ -f "${CANN_SET_ENV:-/usr/local/Ascend/ascend-toolkit/set_env.sh}" ]; then
  # shellcheck disable=SC1091
  source "$script_dir/env_npu.sh"
fi

# The seed spells emotions b'neutral'; one name for the run directory, or one error line.
emotion=$("$PYTHON" - "$emotion" <<'PY'
import sys
from iemocap.data import normalize_emotion
from iemocap.errors import DataError
try:
  print(normalize_emotion(sys.argv[1]))
except DataError as e:
  print(f'error: {e}', file=sys.stderr)
  sys.exit(2)
PY
) || exit 2

log_dir="$train_url/test/output/$ASCEND_DEVICE_ID"
mkdir -p "$log_dir" || exit 2
args=(--emotion="$emotion")
[ -n "$data_url" ] && args+=(--data_path="$data_url")
[ -n "$para_path" ] && args+=(--para_path="$para_path")

# Runs the trainer with its output in a log; on failure, shows its last line and exits with its status.
run_logged() {
  local log=$1
  shift
  "$PYTHON" -m lmf_torch_npu.train "$@" >"$log" 2>&1
  local status=$?
  if [ $status -ne 0 ]; then
    tail -n 1 "$log" >&2
    echo "lmf_torch_npu.train failed (exit $status); full log: $log" >&2
    exit $status
  fi
}

start=$(date +%s)
if [ "$rank_size" -gt 1 ] 2>/dev/null; then
  # N trials side by side on Ray; performance mode is a short training of all of them.
  perf_log=''
  workdir="$train_url/$emotion-${rank_size}p"
  epochs=()
  if [ "$mode" = performance ]; then
    workdir="$workdir-perf"
    epochs=(--epochs="${PERF_EPOCHS:-3}")
  fi
  run_logged "$log_dir/train_${ASCEND_DEVICE_ID}.log" "${args[@]}" --workdir="$workdir" \
    --num_seeds="$rank_size" "${epochs[@]}" "${passed[@]}"
elif [ "$mode" = performance ]; then
  perf_log="$log_dir/train_perf_${ASCEND_DEVICE_ID}.log"
  run_logged "$perf_log" "${args[@]}" --perf_steps="$perf_steps" "${passed[@]}"
  # The accuracy lines come from a short training (PERF_EPOCHS epochs), as ModelZoo's do.
  workdir="$train_url/$emotion-perf"
  run_logged "$log_dir/train_${ASCEND_DEVICE_ID}.log" "${args[@]}" --workdir="$workdir" \
    --epochs="${PERF_EPOCHS:-3}" "${passed[@]}"
else
  perf_log=''
  workdir="$train_url/$emotion"
  run_logged "$log_dir/train_${ASCEND_DEVICE_ID}.log" "${args[@]}" --workdir="$workdir" \
    "${passed[@]}"
fi
end=$(date +%s)

"$PYTHON" - "$workdir/results.json" "$perf_log" "$((end - start))" <<'PY' | tee "$log_dir/modelzoo_summary.log"
import json
import re
import sys

results_path, perf_log, e2e_s = sys.argv[1:]
with open(results_path, encoding='utf-8') as f:
  record = json.load(f)
fps = record['train_samples_per_s']  # full mode: training throughput over whole epochs
if 'members' in record:  # N trials: the sum of their throughputs, one device each
  fps = sum(m['train_samples_per_s'] for m in record['members'])
  print(f'Trials : {record["num_models"]}, test F1 mean {100 * record["f1_mean"]:.2f} '
        f'+- {100 * record["f1_std"]:.2f}')
if perf_log:  # performance mode: batch_size / step time, as the seed measured it
  with open(perf_log, encoding='utf-8') as f:
    fps = float(re.findall(r'([0-9.]+) samples/s \(FPS\)', f.read())[-1])
print(f'Emotion : {record["emotion"]}')
print(f'Device : {record["device"]}')
print(f'Final Performance images/sec : {fps:.2f}')
# ModelZoo's name for the model's accuracy; the value is the best model's test accuracy (%).
print(f'Final Train Accuracy : {100 * record["accuracy"]:.2f}')
print(f'Final Test F1 : {100 * record["f1"]:.2f}')
print(f'E2E Training Duration sec : {e2e_s}')
PY
