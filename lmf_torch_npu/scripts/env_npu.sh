#!/usr/bin/env bash
# The Ascend runtime environment for lmf_torch_npu (ModelZoo's test/env_npu.sh): CANN's
# set_env.sh, then the runtime switches ModelZoo scripts export. Values already set win.
# Sourced by train_full_1p.sh when CANN is installed; source it yourself before a manual run.

cann_set_env=${CANN_SET_ENV:-/usr/local/Ascend/ascend-toolkit/set_env.sh}
if [ -f "$cann_set_env" ]; then
  # shellcheck disable=SC1090
  source "$cann_set_env"
else
  echo "env_npu.sh: $cann_set_env not found: set CANN_SET_ENV to CANN's set_env.sh" >&2
fi

export TASK_QUEUE_ENABLE=${TASK_QUEUE_ENABLE:-1}            # dispatch operators asynchronously
export COMBINED_ENABLE=${COMBINED_ENABLE:-1}                # fuse non-contiguous copies
export HCCL_WHITELIST_DISABLE=${HCCL_WHITELIST_DISABLE:-1}
export ASCEND_SLOG_PRINT_TO_STDOUT=${ASCEND_SLOG_PRINT_TO_STDOUT:-0}
export ASCEND_GLOBAL_LOG_LEVEL=${ASCEND_GLOBAL_LOG_LEVEL:-3}  # errors only
export ASCEND_GLOBAL_EVENT_ENABLE=${ASCEND_GLOBAL_EVENT_ENABLE:-0}
