"""Metadata: sample column detection, missing values, q2 types row, errors naming file and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aam.data.metadata import load_metadata, numeric_target, require_columns, require_samples
from aam.errors import InputError


def _write(tmp_path: Path, text: str, name: str = "md.tsv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("header", ["sample_id", "#SampleID", "sample_name", "sampleid", "id", "#OTUID"])
def test_sample_column_names(tmp_path: Path, header: str) -> None:
    p = _write(tmp_path, f"{header}\tph\nS1\t7.1\nS2\t6.0\n")
    md = load_metadata(p)
    assert md.index.tolist() == ["S1", "S2"]
    assert md.columns.tolist() == ["ph"]


def test_q2_types_bom_and_missing_spellings(tmp_path: Path) -> None:
    text = (
        "\ufeffsample-id\tph\tsite\n#q2:types\tnumeric\tcategorical\n"
        "S1\t7.1\tgut\nS2\tnot provided\tMissing: Not provided\nS3\tNA\t\nS4\tnan\toral\n S5 \t 5.5 \t gut \n"
    )
    md = load_metadata(_write(tmp_path, text))
    assert md.index.tolist() == ["S1", "S2", "S3", "S4", "S5"]
    assert md["site"].isna().tolist() == [False, True, True, False, False]
    assert md.loc["S5", "site"] == "gut"
    values, mask = numeric_target(md, "ph", ["S5", "S1", "S2", "S3", "S4", "S9"])
    assert mask.tolist() == [True, True, False, False, False, False]
    np.testing.assert_allclose(values[:2], [5.5, 7.1])


def test_sample_ids_stay_strings(tmp_path: Path) -> None:
    md = load_metadata(_write(tmp_path, "sample_id\tx\n001\t1\n1.0\t2\n"))
    assert md.index.tolist() == ["001", "1.0"]


def test_no_sample_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "name\tph\nS1\t7\n")
    with pytest.raises(InputError, match=r"md\.tsv has no sample ID column.*sample_id"):
        load_metadata(p)


def test_duplicate_sample_ids_listed(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id\tph\nS1\t7\nS2\t6\nS1\t5\nS3\t1\nS3\t2\n")
    with pytest.raises(InputError, match=r"2 duplicated sample ID\(s\).*S1, S3"):
        load_metadata(p)


def test_missing_column_suggests_closest(tmp_path: Path) -> None:
    p = _write(tmp_path, "sample_id\tbody_site\tph_value\nS1\tgut\t7\n")
    md = load_metadata(p)
    with pytest.raises(InputError, match=r"no column 'body_sites'; did you mean 'body_site'"):
        require_columns(md, ["body_sites"])
    with pytest.raises(InputError, match=r"md\.tsv has no column 'ph'"):
        load_metadata(p, columns=["ph"])


def test_non_numeric_values_listed(tmp_path: Path) -> None:
    md = load_metadata(_write(tmp_path, "sample_id\tph\nS1\t7\nS2\tacidic\nS3\tnot provided\n"))
    with pytest.raises(InputError, match=r"S2='acidic'"):
        numeric_target(md, "ph", ["S1", "S2", "S3"])


def test_require_samples_lists_missing(tmp_path: Path) -> None:
    md = load_metadata(_write(tmp_path, "sample_id\tph\nS1\t7\n"))
    require_samples(md, ["S1"])
    with pytest.raises(InputError, match=r"2 table sample\(s\) are missing from metadata file .*md\.tsv: S2, S3"):
        require_samples(md, ["S1", "S2", "S3"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_metadata(tmp_path / "nope.tsv")
