"""The CPU attention kernel's instruction-set paths (baseline, AVX2+FMA, AVX-512), each forced with AAM_CPU_ISA
on a CPU that has it (skipped with the reason on one that does not), against float64 math with the parity
rule of DESIGN.md: padded (with holes) and packed (varlen) fp32, forward and backward."""

from __future__ import annotations

import pytest
import torch

from aam import native
from aam.ops.attention import selfcheck

ISAS = ("baseline", "avx2", "avx512")
pytestmark = pytest.mark.native("attention_isa")


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch) -> str:
    monkeypatch.setenv("AAM_CPU_ISA", request.param)
    running = native.cpu_module().attention_isa()
    if running != request.param:
        pytest.skip(f"this CPU has no {request.param} (the widest path here is {running})")
    return request.param


def test_the_widest_path_runs_by_default(monkeypatch):
    monkeypatch.delenv("AAM_CPU_ISA", raising=False)
    cpu = native.cpu_module()
    assert cpu.attention_isa() in ISAS
    assert cpu.attention_has_avx2() == (cpu.attention_isa() in ("avx2", "avx512"))


@pytest.mark.parametrize("seq, holes", [(37, True), (101, False)])
def test_padded_attention_parity_per_isa(isa, seq, holes):
    q, k, v, dout, mask = selfcheck.make_case(5, seq, h=4, d=32, seed=3, holes=holes)
    selfcheck.assert_parity("custom", torch.float32, q, k, v, dout, mask)


def test_varlen_attention_parity_per_isa(isa):
    q, k, v, dout, cu = selfcheck.make_varlen_case([5, 0, 1, 13, 64, 31], h=4, d=32, seed=5)
    selfcheck.assert_varlen_parity("custom", torch.float32, q, k, v, dout, cu)
