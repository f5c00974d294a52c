"""Checkpoints written by earlier versions still load and predict what they predicted then.

tests/fixtures/train_ff3a5d8.pt: an `aam train` checkpoint (optimizer state stripped) written at commit
ff3a5d8, before the typed requests and the ops split, on `test_e2e_cli.write_tiny` data (seed 0);
pred_ff3a5d8.tsv: what `aam predict` of that commit wrote for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aam.cli.main import main
from test_e2e_cli import read_tsv, write_tiny

FIXTURES = Path(__file__).parent / "fixtures"


def test_checkpoint_of_ff3a5d8_predicts_the_same(tmp_path):
    data = write_tiny(tmp_path / "data")
    out = tmp_path / "pred.tsv"
    assert main(["predict", "--model", str(FIXTURES / "train_ff3a5d8.pt"), "--table", str(data["table"]),
                 "--output", str(out)]) == 0
    want = {r["sample_id"]: float(r["prediction"]) for r in read_tsv(FIXTURES / "pred_ff3a5d8.tsv")}
    got = {r["sample_id"]: float(r["prediction"]) for r in read_tsv(out)}
    assert set(got) == set(want) and len(want) == 27
    for sid, value in want.items():
        assert got[sid] == pytest.approx(value, rel=1e-5, abs=1e-5)
