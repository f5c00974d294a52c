"""Distance matrices: readers round-trip (matched by ID), validation errors name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import skbio

from aam.data.distances import DistanceMatrix, check_covers, load_distance_matrix, write_distance_matrix
from aam.errors import InputError

IDS = ["S3", "S1", "S2", "S0"]


def _dm() -> DistanceMatrix:
    rng = np.random.default_rng(0)
    x = rng.random((4, 4))
    d = x + x.T
    np.fill_diagonal(d, 0.0)
    return DistanceMatrix(IDS, d)


@pytest.mark.parametrize("suffix", [".h5", ".tsv", ".npy"])
def test_write_read_roundtrip(tmp_path: Path, suffix: str) -> None:
    dm = _dm()
    path = write_distance_matrix(dm, tmp_path / f"dm{suffix}")
    back = load_distance_matrix(path)
    assert back.ids == IDS
    np.testing.assert_array_equal(back.data, dm.data)
    # Lookups go by ID, never by position.
    np.testing.assert_array_equal(back.pairs(["S0", "S3"]), [[0.0, dm.data[3, 0]], [dm.data[0, 3], 0.0]])


def test_skbio_tsv_and_ssu_bytes_ids(tmp_path: Path) -> None:
    dm = _dm()
    sk = skbio.DistanceMatrix(dm.data, IDS)
    sk.write(str(tmp_path / "sk.tsv"))
    back = load_distance_matrix(tmp_path / "sk.tsv")
    assert back.ids == IDS
    np.testing.assert_allclose(back.data, dm.data, rtol=0, atol=1e-15)
    with h5py.File(tmp_path / "ssu.h5", "w") as f:  # ssu writes fixed-length byte strings
        f.create_dataset("matrix", data=dm.data.astype(np.float32))
        f.create_dataset("order", data=np.array([s.encode() for s in IDS], dtype="S8"))
    back = load_distance_matrix(tmp_path / "ssu.h5")
    assert back.ids == IDS and back.data.dtype == np.float32  # float32 files stay float32 in memory
    assert back.pairs(IDS[:2]).dtype == np.float64


def test_pairs_and_subset() -> None:
    dm = _dm()
    sub = dm.subset(["S2", "S1"])
    assert sub.ids == ["S2", "S1"]
    assert sub.data[0, 1] == dm.data[2, 1]
    with pytest.raises(InputError, match=r"1 of 2 table samples are missing from distance matrix .*: S9"):
        dm.pairs(["S1", "S9"])


def test_check_covers_lists_first_missing() -> None:
    dm = _dm()
    check_covers(dm, ["S0", "S1"], "dm.h5")
    wanted = ["S0"] + [f"X{i}" for i in range(15)]
    with pytest.raises(InputError, match=r"15 of 16 table samples are missing from distance matrix dm\.h5: X0, X1.*X9 \.\.\.; recompute") as exc:
        check_covers(dm, wanted, "dm.h5")
    assert "X10" not in str(exc.value)


def _bad(tmp_path: Path, data: np.ndarray, name: str = "bad.npy") -> Path:
    p = tmp_path / name
    np.save(p, data)
    (tmp_path / (p.stem + ".ids.txt")).write_text("\n".join(IDS[: data.shape[0]]) + "\n")
    return p


def test_non_square(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"bad\.npy is not a square matrix"):
        load_distance_matrix(_bad(tmp_path, np.zeros((4, 3))))


def test_asymmetric(tmp_path: Path) -> None:
    d = _dm().data.copy()
    d[0, 1] += 0.1
    with pytest.raises(InputError, match=r"bad\.npy is not symmetric .*'S3', 'S1'"):
        load_distance_matrix(_bad(tmp_path, d))
    d = _dm().data.copy()
    d[0, 1] += 1e-9  # within tolerance (float32 round-off)
    load_distance_matrix(_bad(tmp_path, d, "ok.npy"))


def test_nan(tmp_path: Path) -> None:
    d = _dm().data.copy()
    d[1, 2] = d[2, 1] = np.nan
    with pytest.raises(InputError, match=r"bad\.npy has 2 NaN/inf entries"):
        load_distance_matrix(_bad(tmp_path, d))


def test_negative(tmp_path: Path) -> None:
    d = _dm().data.copy()
    d[1, 2] = d[2, 1] = -0.5
    with pytest.raises(InputError, match=r"bad\.npy has 2 negative entries"):
        load_distance_matrix(_bad(tmp_path, d))


def test_nonzero_diagonal(tmp_path: Path) -> None:
    d = _dm().data.copy()
    d[2, 2] = 0.3
    with pytest.raises(InputError, match=r"bad\.npy has a non-zero diagonal .*'S2'"):
        load_distance_matrix(_bad(tmp_path, d))


def test_npy_without_ids(tmp_path: Path) -> None:
    p = tmp_path / "noids.npy"
    np.save(p, _dm().data)
    with pytest.raises(InputError, match=r"carries no sample IDs .*noids\.ids\.txt"):
        load_distance_matrix(p)
    ids = tmp_path / "names.txt"
    ids.write_text("\n".join(IDS))
    assert load_distance_matrix(p, ids_path=ids).ids == IDS


def test_missing_file_and_bad_h5(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_distance_matrix(tmp_path / "none.h5")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("distances", data=np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"no 'matrix' and 'order'"):
        load_distance_matrix(tmp_path / "x.h5")
