"""Print a markdown table from pytest-benchmark JSON files: median time, rounds and extra_info.

Usage: python benchmarks/summarize.py benchmarks/results/<run>/bench.json [more.json ...]
"""

from __future__ import annotations

import json
import sys


def fmt_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def summarize(path: str) -> str:
    data = json.load(open(path))
    machine = data.get("machine_info", {})
    lines = [f"### {path}", "", f"cpu: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"python {machine.get('python_version', '?')}, {data.get('datetime', '')}", "",
             "| benchmark | median ms | rounds | extra |", "|---|---|---|---|"]
    for b in data.get("benchmarks", []):
        extra = ", ".join(f"{k}={fmt_value(v)}" for k, v in b.get("extra_info", {}).items())
        lines.append(f"| {b['name']} | {b['stats']['median'] * 1e3:.3f} | {b['stats']['rounds']} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(summarize(p))
        print()
