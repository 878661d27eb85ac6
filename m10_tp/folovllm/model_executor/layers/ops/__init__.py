"""Triton kernels behind the model's layers (m8): ``gemv``, the decode-size linear layer."""
