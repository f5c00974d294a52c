"""Median seconds of the roofline benchmark's pretraining step (`bench_roofline.Step`: the DESIGN.md config, the
shared nucleotide pass, `--kernels auto`), for A/B timings of two checkouts on one machine, interleaved:

    for r in 1 2 3; do for tree in /path/old /path/new; do
        PYTHONPATH=$tree/src .venv/bin/python $tree/benchmarks/step_time.py bf16; done; done
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_roofline  # noqa: E402


def main(precision: str = "fp32", steps: int = 5) -> float:
    step = bench_roofline.Step("auto", nuc_pass="shared", amp=torch.bfloat16 if precision == "bf16" else None)
    for _ in range(2):  # warm-up: kernels loaded, allocator primed
        step.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    precision = sys.argv[1] if len(sys.argv) > 1 else "fp32"
    print(f"{Path(__file__).resolve().parents[1]} {precision} {main(precision):.3f} s/step")
