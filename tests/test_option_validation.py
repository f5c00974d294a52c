"""Every numeric option of every command is validated in one place (the typed requests): an out-of-range, NaN or
infinite value ends with one line naming the option, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import dataclasses
import math

import pytest

from aam.cli.main import main
from aam.workflows import requests as R

# command -> (request class, the arguments it needs besides the option under test)
COMMANDS = {
    "pretrain": (R.PretrainRequest, ["--table", "t.biom", "--tree", "t.nwk"]),
    "train": (R.TrainRequest, ["--table", "t.biom", "--metadata", "m.tsv", "--metadata-column", "age"]),
    "cv": (R.CVRequest, ["--table", "t.biom", "--metadata", "m.tsv", "--metadata-column", "age"]),
    "tune": (R.TuneRequest, ["--table", "t.biom", "--metadata", "m.tsv", "--metadata-column", "age"]),
    "predict": (R.PredictRequest, ["--model", "m.pt", "--table", "t.biom"]),
    "embed": (R.EmbedRequest, ["--model", "m.pt", "--table", "t.biom"]),
    "explain": (R.ExplainRequest, ["--model", "m.pt", "--table", "t.biom"]),
}
OUTPUT = {"predict": "--output", "embed": "--output", "explain": "--output"}  # the others take --output-dir


def _rules(cls: type) -> dict[str, R.Rule]:
    """Every validated field of a request and of its option groups (a CV/tune request's train request too)."""
    out = dict(getattr(cls, "RULES", {}))
    for f in dataclasses.fields(cls):
        sub = {"train": R.TrainRequest}.get(f.name) or (f.default_factory().__class__
                                                         if f.default_factory is not dataclasses.MISSING else None)
        if sub is None and f.name in ("source", "input", "labels"):
            continue
        if sub is not None and dataclasses.is_dataclass(sub):
            out.update(_rules(sub))
    return out


def _bad_values(rule: R.Rule, integer: bool) -> list[str]:
    bad = [f"{rule.lo - 1:g}"] if rule.lo is not None else []
    if rule.low_open and rule.lo is not None:
        bad.append(f"{rule.lo:g}")
    if rule.hi is not None:
        bad.append(f"{rule.hi + 1:g}")
        if rule.high_open:
            bad.append(f"{rule.hi:g}")
    if not integer:
        bad += ["nan", "inf"]
    return bad


def _cases() -> list[tuple[str, str, str]]:
    from aam.cli.main import cli

    cases = []
    for command, (cls, _) in COMMANDS.items():
        params = {p.name: p for p in cli.get_command(None, command).params}
        for name, rule in _rules(cls).items():
            if name not in params:
                continue  # a field another command fills in
            integer = getattr(params[name].type, "name", "") == "integer"
            cases += [(command, name, v) for v in _bad_values(rule, integer)]
    return cases


CASES = _cases()


def test_the_walk_covers_every_validated_option():
    covered = {(c, n) for c, n, _ in CASES}
    assert len(CASES) > 100
    for command in COMMANDS:
        assert any(c == command for c, _ in covered), command
    assert ("train", "lr") in covered and ("pretrain", "test_size") in covered and ("cv", "rf_trees") in covered


@pytest.mark.parametrize(("command", "name", "value"), CASES, ids=[f"{c}-{n}={v}" for c, n, v in CASES])
def test_out_of_range_value_is_one_line_and_exit_2(command, name, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    option = f"--{name.replace('_', '-')}"
    out = ["--output" if command in OUTPUT else "--output-dir", str(tmp_path / "out")]
    rc = main([command, *COMMANDS[command][1], *out, option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and option in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_rule_bounds():
    assert R.between(0, 1, high_open=True).ok(0.0) and not R.between(0, 1, high_open=True).ok(1.0)
    assert not R.above(0).ok(0) and R.above(0).ok(1e-9) and not R.at_least(1).ok(math.nan)
    assert not R.at_least(0).ok(True)  # a flag is not a number
