#!/usr/bin/env bash
# ModelZoo-style performance run of LMF (lmf_torch_npu): the arguments of train_full_1p.sh, plus
# --perf_steps=N (timed train steps, default 100) and PERF_EPOCHS (the short training that gives
# the accuracy lines, default 3). FPS is batch_size / step time, as the seed measured it.
LMF_MODELZOO_MODE=performance exec bash "$(dirname "${BASH_SOURCE[0]}")/train_full_1p.sh" "$@"
