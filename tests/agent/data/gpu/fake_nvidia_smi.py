"""Stands in for `nvidia-smi --query-gpu=name --format=csv,noheader` on a two-GPU node."""
print("NVIDIA A100-SXM4-40GB")
print("NVIDIA A100-SXM4-40GB")
