"""`aam kernels` and `python -m aam.ops`: the backend report, self-checks, JSON output, exit codes."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from aam.cli.main import cli
from aam.ops import diagnostics, registry


def _rows(rep, op):
    return {r["backend"]: r for r in rep["backends"] if r["op"] == op and r["device"] == "cpu"}


def test_kernels_json_report(tmp_path):
    path = tmp_path / "kernels.json"
    result = CliRunner().invoke(cli, ["kernels", "--device", "cpu", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "masked_attention" in result.output and "PASS" in result.output
    rep = json.loads(path.read_text())
    assert rep["versions"]["torch"] and "hip" in rep["versions"] and "gpu_arch" in rep["versions"]
    assert set(rep["modules"]) == {"aam._C", "aam._C_cuda", "aam._C_hip"}
    for name, state in rep["modules"].items():  # loaded exactly when the module file exists
        exists = importlib.util.find_spec(name) is not None
        assert state["loaded"] == exists and (state["error"] is None) == exists, (name, state)
        if not exists:
            assert "not importable" in state["error"]
    att = _rows(rep, "masked_attention")
    assert set(att) == {"custom", "triton", "sdpa", "math"}
    for name in ("sdpa", "math"):
        assert att[name]["available"] and att[name]["self_check"]["status"] == "PASS"
        assert att[name]["self_check"]["max_err_fwd"] < 1e-4 and not att[name]["self_check"]["nan"]
    if importlib.util.find_spec("aam._C") is not None:
        assert att["custom"]["self_check"]["status"] == "PASS"
        from aam import native  # each C++ kernel's instruction-set path, as the module reports it

        paths = rep["versions"]["cpu_isa"]
        assert paths == {op: getattr(native.cpu_module(), f"{op}_isa")() for op in diagnostics.CPU_ISA_OPS}
        assert f"attention {paths['attention']}, pairwise loss {paths['pairwise_loss']}" in result.output
    else:
        assert not att["custom"]["available"] and "aam._C" in att["custom"]["reason"]
    assert not att["triton"]["available"] and "TRITON_INTERPRET" in att["triton"]["reason"]
    # every registered op is covered, ops without a self-check report availability only
    ops = {r["op"] for r in rep["backends"]}
    assert {"masked_attention", "masked_attention_varlen", "pairwise_unifrac_loss"} <= ops
    assert rep["failed"] == []


def test_failed_self_check_exits_nonzero(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._diagnostics, "masked_attention",
                        lambda backend, device: {"ok": backend != "sdpa", "detail": "forced failure"})
    result = CliRunner().invoke(cli, ["kernels", "--device", "cpu"])
    assert result.exit_code == 1
    assert "FAILED self-checks: masked_attention/sdpa/cpu" in result.output


def test_crashing_self_check_is_a_failure(monkeypatch):
    def boom(backend, device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(registry._diagnostics, "masked_attention", boom)
    res = diagnostics.run_self_check("masked_attention", "math", __import__("torch").device("cpu"))
    assert res["status"] == "FAIL" and "kernel exploded" in res["detail"]


def test_python_m_aam_ops_no_check(capsys):
    assert diagnostics.main(["--no-check"]) == 0
    out = capsys.readouterr().out
    assert "compiled modules:" in out and "masked_attention" in out


def test_cuda_device_without_gpu_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(cli, ["kernels", "--device", "cuda"])
    assert result.exit_code != 0
