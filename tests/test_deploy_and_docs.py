"""deploy/ and docs/: the SLURM templates render to valid bash, and every aam command and option that the
templates, containers and documentation name exists (its `--help` runs)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from aam.cli.main import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
CALL = re.compile(r"(?:\baam|aam\.cli\.main)\s+(" + "|".join(sorted(COMMANDS, key=len, reverse=True)) + r")\b(.*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


def _render_module():
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("sbatch")
    assert _render_module().main(["--all", str(out)]) == 0
    return sorted(out.glob("*.sbatch"))


def _code_lines(path: Path) -> list[str]:
    """Lines that run commands: fenced code blocks of Markdown, every line of a script; backslash continuations
    joined, comments dropped."""
    lines = path.read_text().splitlines()
    if path.suffix == ".md":
        keep, inside = [], False
        for line in lines:
            if line.strip().startswith("```"):
                inside = not inside
            elif inside:
                keep.append(line)
        lines = keep
    joined: list[str] = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line)
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    return joined


def calls(path: Path) -> list[tuple[str, list[str]]]:
    """(command, options) of every aam call in `path`."""
    out = []
    for line in _code_lines(path):
        for m in CALL.finditer(line):
            out.append((m.group(1), OPTION.findall(m.group(2))))
    return out


def _options(command: str) -> set[str]:
    cmd = cli.get_command(click.Context(cli), command)
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def test_templates_render_to_valid_bash_for_every_vendor_shape_and_command(rendered):
    assert len(rendered) == 12
    bash = shutil.which("bash")
    for path in rendered:
        text = path.read_text()
        subprocess.run([bash, "-n", str(path)], check=True)
        assert "#SBATCH --signal=B:USR1@" in text and "--resume auto" in text and "scontrol requeue" in text
        assert "$LOCAL/$(basename" in text  # inputs read from node-local scratch
        if "rocm" in path.name:
            assert "MIOPEN_USER_DB_PATH=$LOCAL" in text and "HSA_XNACK=1" in text
        if "-nodes-" in path.name:
            assert "--rdzv-endpoint" in text and "SLURM_NNODES" in text
        assert calls(path), path


def _documented() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").glob("*.def")),
            ROOT / "deploy/Dockerfile"]


def test_every_aam_option_in_docs_and_deploy_exists(rendered):
    missing, seen = [], set()
    for path in [*_documented(), *rendered]:
        for command, options in calls(path):
            seen.add(command)
            known = _options(command)
            missing += [f"{path.name}: aam {command} {o}" for o in options if o not in known]
    assert not missing, missing
    assert {"pretrain", "train", "predict", "cv", "unifrac", "kernels"} <= seen


def test_help_of_every_command_named_in_docs_and_deploy(rendered):
    runner = CliRunner()
    named = {c for path in [*_documented(), *rendered] for c, _ in calls(path)}
    for command in sorted(named):
        res = runner.invoke(cli, [command, "--help"])
        assert res.exit_code == 0, (command, res.output)
        assert "Usage:" in res.output
