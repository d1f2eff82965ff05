"""LMF in PyTorch for Ascend NPUs (torch_npu), CUDA or CPU: the production path."""
