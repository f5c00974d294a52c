"""The backend report printed by `python -m aam.ops` and `aam kernels`.

For every registered op and backend: available or the reason it is not, then (for available ones) a
quick self-check: the op's diagnostic (`aam.ops.registry.register_diagnostic`), `fn(backend, device)`
returning None (pass), a string (the failure), or a dict with at least `ok` (bool) and `detail` (str);
ops without one are reported as available without a check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from typing import Any

import torch

from aam import native
from aam.ops import registry

MODULES = native.MODULES
# The C++ kernels whose instruction-set path (baseline, avx2, avx512) `aam kernels` reports.
CPU_ISA_OPS = ("attention", "pairwise_loss", "dropout", "unifrac")


def backend_rows(device: torch.device, dtype: torch.dtype = torch.float32) -> list[dict]:
    """One row per (op, backend): available or the reason it is not."""
    import aam.ops  # noqa: F401  (registers every op)

    req = registry.KernelRequest(device, dtype, head_dim=32, batch=256, dim=128)  # L = 151 keys and queries
    rows = []
    for op in registry.ops():
        if op.startswith("_"):
            continue
        for name, reason in registry.status(op, req):
            rows.append({"op": op, "backend": name, "device": str(device), "available": reason is None,
                         "reason": reason or ""})
    return rows


def versions() -> dict[str, Any]:
    """torch, CUDA / HIP, GPU name and architecture, triton, Python, platform."""
    info: dict[str, Any] = {
        "aam": importlib.import_module("aam").__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": None,
        "gpu_arch": None,
    }
    ok, why = native.has_triton()
    if ok:
        import triton

        info["triton"] = triton.__version__
    else:
        info["triton"] = None
        info["triton_error"] = why
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_arch"] = getattr(props, "gcnArchName", None) or f"sm_{props.major}{props.minor}"
        info["gpu_count"] = torch.cuda.device_count()
    cpu = native.cpu_module()
    if cpu is not None:
        info["cpu_openmp"] = bool(getattr(cpu, "has_openmp", False))
        if hasattr(cpu, "attention_has_avx2"):
            info["cpu_avx2"] = bool(cpu.attention_has_avx2())
        # the instruction set of each C++ kernel's path that runs here (AAM_CPU_ISA narrows them)
        info["cpu_isa"] = {op: getattr(cpu, f"{op}_isa")() for op in CPU_ISA_OPS if hasattr(cpu, f"{op}_isa")}
    return info


def modules() -> dict[str, dict[str, Any]]:
    """Which compiled modules loaded, with the import error of the others."""
    out = {}
    for name in MODULES:
        err = native.load_error(name)
        out[f"aam.{name}"] = {"loaded": err is None, "error": err}
    return out


def _normalize(result: Any) -> dict[str, Any]:
    if result is None:
        return {"ok": True, "detail": ""}
    if isinstance(result, str):
        return {"ok": False, "detail": result}
    if isinstance(result, dict):
        res = dict(result)
        res["ok"] = bool(res.get("ok", False))
        res.setdefault("detail", "")
        return res
    return {"ok": bool(result), "detail": ""}


def run_self_check(op: str, backend: str, device: torch.device) -> dict[str, Any]:
    """{"status": PASS | FAIL | NO-CHECK, ...}: one quick check of `backend` of `op` on `device`."""
    fn = registry.diagnostic(op)
    if fn is None:
        return {"status": "NO-CHECK", "detail": "this op has no self-check; availability only"}
    start = time.perf_counter()
    try:
        res = _normalize(fn(backend, device))
    except Exception as exc:  # a crashing backend is a failed check, reported with its error
        res = {"ok": False, "detail": f"self-check raised {type(exc).__name__}: {exc}"}
    res["status"] = "PASS" if res.pop("ok") else "FAIL"
    res["seconds"] = round(time.perf_counter() - start, 3)
    return res


def devices() -> list[torch.device]:
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs.append(torch.device("cuda"))
    return devs


def report(devs: list[torch.device] | None = None, check: bool = True) -> dict[str, Any]:
    """Everything `aam kernels` shows, as a JSON-serialisable dict."""
    rows = []
    for dev in devs or devices():
        for row in backend_rows(dev):
            if row["available"] and check:
                row["self_check"] = run_self_check(row["op"], row["backend"], dev)
            rows.append(row)
    failed = [f"{r['op']}/{r['backend']}/{r['device']}" for r in rows
              if r.get("self_check", {}).get("status") == "FAIL"]
    return {"versions": versions(), "modules": modules(), "backends": rows, "failed": failed,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("AAM_", "TRITON_", "OMP_"))}}


def _isa_summary(paths: dict[str, str]) -> str:
    """{"attention": "avx512", "dropout": "avx2", ...} -> "attention avx512, dropout avx2, ..."."""
    return ", ".join(f"{op.replace('_', ' ')} {isa}" for op, isa in paths.items())


def format_report(rep: dict[str, Any]) -> str:
    v = rep["versions"]
    gpu = f"{v['gpu']} ({v['gpu_arch']})" if v.get("gpu") else "none"
    runtime = f"CUDA {v['cuda']}" if v.get("cuda") else (f"HIP {v['hip']}" if v.get("hip") else "CPU only")
    lines = [f"aam {v['aam']}  torch {v['torch']}  {runtime}  triton {v.get('triton') or 'not installed'}",
             f"GPU: {gpu}   CPU threads: {v['cpu_threads']}"
             + (f"   CPU kernel paths: {_isa_summary(v['cpu_isa'])}" if v.get("cpu_isa") else ""),
             "compiled modules:"]
    for name, m in rep["modules"].items():
        lines.append(f"  {name:<12} {'loaded' if m['loaded'] else m['error']}")
    lines.append("backends (op, backend, device: state):")
    for r in rep["backends"]:
        if not r["available"]:
            state = f"unavailable: {r['reason']}"
        elif "self_check" in r:
            sc = r["self_check"]
            state = f"available  {sc['status']}" + (f"  {sc['detail']}" if sc.get("detail") else "")
        else:
            state = "available"
        lines.append(f"  {r['op']:<24} {r['backend']:<7} {r['device']:<5} {state}")
    if rep["failed"]:
        lines.append(f"FAILED self-checks: {', '.join(rep['failed'])}")
    return "\n".join(lines)


def write_json(rep: dict[str, Any], path: str) -> None:
    with open(path, "w") as fh:
        json.dump(rep, fh, indent=2, default=str)
        fh.write("\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m aam.ops [--json FILE] [--no-check]`; exit 1 when an available backend fails its check."""
    parser = argparse.ArgumentParser(prog="python -m aam.ops", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    parser.add_argument("--no-check", action="store_true", help="only report availability")
    args = parser.parse_args(argv)
    rep = report(check=not args.no_check)
    print(format_report(rep))
    if args.json:
        write_json(rep, args.json)
    return 1 if rep["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
