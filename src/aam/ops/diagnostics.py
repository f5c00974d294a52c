"""The backend table printed by `python -m aam.ops` and `aam kernels`."""

from __future__ import annotations

import torch

from aam.ops import _ext, registry


def backend_rows(device: torch.device, dtype: torch.dtype = torch.float32) -> list[dict]:
    """One row per (op, backend): available or the reason it is not."""
    import aam.ops  # noqa: F401  (registers every op)

    req = {"device": device, "dtype": dtype, "head_dim": 32, "seq_len": 151, "dropout_p": 0.0,
           "batch": 256, "dim": 128}
    rows = []
    for op in registry.ops():
        for name, reason in registry.status(op, req):
            rows.append({"op": op, "backend": name, "available": reason is None, "reason": reason or ""})
    return rows


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}  device {device}")
    for name in ("_C", "_C_cuda", "_C_hip"):
        err = _ext.load_error(name)
        print(f"  aam.{name}: {'loaded' if err is None else err}")
    for row in backend_rows(device):
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        print(f"  {row['op']:<24} {row['backend']:<8} {state}")
    return 0
