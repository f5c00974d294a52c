"""Triton kernels, shipped inside the wheel as `aam.kernels`. Imported only when Triton is present."""
