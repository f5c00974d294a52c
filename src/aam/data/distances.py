"""Precomputed sample distance matrices (UniFrac targets): read, validate, write, look up batch pairs.

Formats: ssu-style HDF5 (`matrix` + `order` datasets), scikit-bio lsmat TSV (first line: a tab then the
IDs; then one row per ID), `.npy` with a sidecar IDs file (`<stem>.ids.txt` or `ids_path`, one ID per
line). Samples are always matched by ID, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from aam.errors import InputError

N_LIST = 10
ATOL = 1e-6


class DistanceMatrix:
    """Square symmetric distance matrix with sample IDs; `pairs(ids)` gives the [B, B] block of a batch."""

    def __init__(self, ids: Sequence[str], data: np.ndarray, path: str | Path | None = None) -> None:
        self.ids: list[str] = [str(i) for i in ids]
        self.data = np.ascontiguousarray(data, dtype=np.float64)
        self.path = str(path) if path is not None else "distance matrix"
        self._index = {s: k for k, s in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            seen: set[str] = set()
            dup = [s for s in self.ids if s in seen or seen.add(s)]  # type: ignore[func-returns-value]
            raise InputError(f"{self.path} has duplicated sample IDs: {', '.join(dup[:N_LIST])}; keep one row per sample")
        if self.data.ndim != 2 or self.data.shape[0] != self.data.shape[1]:
            raise InputError(f"{self.path} is not a square matrix (shape {self.data.shape}); pass a sample x sample distance matrix")
        if self.data.shape[0] != len(self.ids):
            raise InputError(
                f"{self.path} has {self.data.shape[0]} rows but {len(self.ids)} sample IDs; the IDs must name every row"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def indices(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Row index of each sample ID (InputError naming the first missing ones)."""
        try:
            return np.fromiter((self._index[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))
        except KeyError:
            check_covers(self, sample_ids, self.path)
            raise

    def pairs(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Distances between the given samples, float64 [B, B], in the given order."""
        idx = self.indices(sample_ids)
        return self.data[idx[:, None], idx[None, :]]

    def subset(self, sample_ids: Sequence[str]) -> DistanceMatrix:
        """A new DistanceMatrix over `sample_ids`, in that order."""
        return DistanceMatrix(list(sample_ids), self.pairs(sample_ids), self.path)

    def validate(self, atol: float = ATOL) -> DistanceMatrix:
        """InputError on NaN/inf, negative entries, asymmetry or a non-zero diagonal (tolerance `atol`, relative)."""
        d = self.data
        scale = max(1.0, float(np.nanmax(np.abs(d)))) if d.size and not np.isnan(d).all() else 1.0
        tol = atol * scale
        finite = np.isfinite(d)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise InputError(
                f"{self.path} has {int((~finite).sum())} NaN/inf entries (first at {self.ids[r]!r}, {self.ids[c]!r}); "
                "recompute the distances (check for empty samples)"
            )
        neg = d < -tol
        if neg.any():
            r, c = np.argwhere(neg)[0]
            raise InputError(
                f"{self.path} has {int(neg.sum())} negative entries (e.g. {d[r, c]:.3g} at {self.ids[r]!r}, {self.ids[c]!r}); "
                "distances must be >= 0"
            )
        block = max(1, 2**22 // max(1, d.shape[0]))  # bounded temporaries for large matrices
        for i0 in range(0, d.shape[0], block):
            asym = np.abs(d[i0 : i0 + block] - d[:, i0 : i0 + block].T)
            if asym.max(initial=0.0) > tol:
                r, c = np.unravel_index(int(np.argmax(asym)), asym.shape)
                r += i0
                raise InputError(
                    f"{self.path} is not symmetric (d[{self.ids[r]!r}, {self.ids[c]!r}] = {d[r, c]:.6g} but the "
                    f"transpose is {d[c, r]:.6g}); pass a symmetric distance matrix"
                )
        diag = np.abs(np.diag(d))
        if diag.max(initial=0.0) > tol:
            r = int(np.argmax(diag))
            raise InputError(
                f"{self.path} has a non-zero diagonal ({d[r, r]:.6g} for {self.ids[r]!r}); a sample's distance to itself must be 0"
            )
        return self


def check_covers(dm: DistanceMatrix, sample_ids: Sequence[str], path: str | Path | None = None) -> None:
    """InputError listing the first 10 of `sample_ids` that `dm` lacks, and how many."""
    path = path or dm.path
    have = dm._index
    missing = [s for s in sample_ids if s not in have]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(sample_ids)} table samples are missing from distance matrix {path}: "
            f"{', '.join(missing[:N_LIST])}{' ...' if len(missing) > N_LIST else ''}; "
            "recompute it for this table (aam unifrac) or filter the table to its samples"
        )


def _decode(ids: np.ndarray) -> list[str]:
    return [i.decode("utf-8") if isinstance(i, bytes | np.bytes_) else str(i) for i in ids.tolist()]


def _read_h5(path: Path) -> DistanceMatrix:
    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f or "order" not in f:
                raise InputError(
                    f"{path} has no 'matrix' and 'order' datasets (found: {', '.join(list(f.keys())[:5])}); "
                    "pass an ssu-style HDF5 distance matrix (aam unifrac, ssu -o)"
                )
            data = f["matrix"][()]
            ids = _decode(np.asarray(f["order"][()]).reshape(-1))
    except OSError as exc:
        raise InputError(f"{path} is not a readable HDF5 file ({exc}); pass an ssu-style .h5 distance matrix") from exc
    return DistanceMatrix(ids, data, path)


def _read_text(path: Path, sep: str) -> DistanceMatrix:
    try:
        df = pd.read_csv(path, sep=sep, index_col=0, dtype={0: str}, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a readable distance matrix table ({exc}); pass a scikit-bio TSV") from exc
    df.index = df.index.astype(str).str.strip()
    df.columns = df.columns.astype(str).str.strip()
    if df.shape[0] != df.shape[1]:
        raise InputError(f"{path} is not a square matrix ({df.shape[0]} rows x {df.shape[1]} columns); pass a sample x sample matrix")
    if set(df.columns) != set(df.index):
        raise InputError(f"{path} has different row and column sample IDs; rows and columns must name the same samples")
    try:
        data = df.loc[:, list(df.index)].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path} has non-numeric distances ({exc}); every entry must be a number") from exc
    return DistanceMatrix(list(df.index), data, path)


def _read_npy(path: Path, ids_path: str | Path | None) -> DistanceMatrix:
    ids_file = Path(ids_path) if ids_path is not None else path.with_name(path.stem + ".ids.txt")
    if not ids_file.is_file():
        raise InputError(
            f"{path} carries no sample IDs and {ids_file} does not exist; write the IDs one per line to "
            f"{path.stem}.ids.txt (rows are never assumed to be in table order)"
        )
    ids = [line.strip() for line in ids_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path} is not a numeric .npy array ({exc}); save it with numpy.save") from exc
    return DistanceMatrix(ids, data, path)


def load_distance_matrix(path: str | Path, ids_path: str | Path | None = None, validate: bool = True) -> DistanceMatrix:
    """Read a distance matrix (.h5/.hdf5 ssu layout, .tsv/.txt scikit-bio lsmat, .csv, .npy + IDs file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"distance matrix {path} does not exist; check the path or compute it with `aam unifrac`")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        dm = _read_h5(path)
    elif suffix == ".npy":
        dm = _read_npy(path, ids_path)
    elif suffix in (".tsv", ".txt", ".lsmat"):
        dm = _read_text(path, "\t")
    elif suffix == ".csv":
        dm = _read_text(path, ",")
    else:
        raise InputError(f"{path}: unknown distance matrix format {suffix!r}; use .h5 (ssu), .tsv (scikit-bio) or .npy + .ids.txt")
    return dm.validate() if validate else dm


def write_distance_matrix(dm: DistanceMatrix, path: str | Path) -> Path:
    """Write `dm` as ssu-style HDF5 (.h5/.hdf5), scikit-bio TSV (.tsv/.txt) or .npy + <stem>.ids.txt."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        with h5py.File(path, "w") as f:
            f.create_dataset("matrix", data=dm.data)
            f.create_dataset("order", data=np.array([s.encode("utf-8") for s in dm.ids], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
    elif suffix in (".tsv", ".txt", ".lsmat"):
        df = pd.DataFrame(dm.data, index=dm.ids, columns=dm.ids)
        df.to_csv(path, sep="\t", index_label="", float_format="%.17g", encoding="utf-8")
    elif suffix == ".npy":
        np.save(path, dm.data)
        path.with_name(path.stem + ".ids.txt").write_text("".join(s + "\n" for s in dm.ids), encoding="utf-8")
    else:
        raise InputError(f"{path}: cannot write distance matrix format {suffix!r}; use .h5, .tsv or .npy")
    return path
