"""Commands that need no model start without torch: `aam --help`, every subcommand's `--help`, and `aam unifrac`
import neither torch nor triton (a fresh interpreter, its sys.modules checked after the command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aam.cli.main import COMMANDS
from aam.data import synthetic
from subprocess_env import child_env

PROBE = """
import json, sys
from aam.cli.main import main
code = main(json.loads(sys.argv[1]))
print("MODULES " + json.dumps({"code": code, "torch": "torch" in sys.modules, "triton": "triton" in sys.modules}))
"""


def _run(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         timeout=120, env=child_env(AAM_NO_PROGRESS="1"))
    line = next((x for x in res.stdout.splitlines() if x.startswith("MODULES ")), None)
    assert line is not None, res.stderr[-2000:]
    return json.loads(line[len("MODULES "):])


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in COMMANDS]], ids=lambda a: " ".join(a))
def test_help_imports_neither_torch_nor_triton(args):
    got = _run(args)
    assert got == {"code": 0, "torch": False, "triton": False}


def test_unifrac_imports_neither_torch_nor_triton(tmp_path):
    data = synthetic.write_dataset(synthetic.make_dataset(12, n_features=20, seed=2), tmp_path / "data")
    out = tmp_path / "dm.tsv"
    got = _run(["unifrac", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output", str(out)])
    assert got == {"code": 0, "torch": False, "triton": False}
    assert len(out.read_text().splitlines()) == 13  # header + 12 samples
