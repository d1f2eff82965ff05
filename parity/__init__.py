"""Cross-framework parity: lmf_jax and lmf_torch_npu must agree on shared IEMOCAP batches."""
