#!/usr/bin/env bash
# ModelZoo-style training of LMF (lmf_torch_npu) on the eight NPUs of one node: eight
# independent trials at once (RANK_SIZE=8; seeds --seed .. --seed+7), one per NPU through Ray, with
# the arguments of train_full_1p.sh. Without NPUs the trials share the GPUs or CPU cores there are.
# See train_full_1p.sh for why LMF runs trials rather than data-parallel DDP.
LMF_TRIALS=${RANK_SIZE:-8} exec bash "$(dirname "${BASH_SOURCE[0]}")/train_full_1p.sh" "$@"
