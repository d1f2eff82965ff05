"""The framework-neutral engine: the training protocol for N >= 1 models, workdirs and their
records, early stopping, the 2018 checkpoint schema and its safetensors I/O, the Adam-group rule,
and what every command line shares. Backends (lmf_jax, lmf_torch_npu) implement its interface."""
