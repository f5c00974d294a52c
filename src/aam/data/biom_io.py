"""BIOM tables: loading (BIOM 2.x HDF5, JSON, QIIME 2 FeatureTable .qza) and seeded rarefaction."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import biom
import h5py
import numpy as np

from aam.errors import InputError

log = logging.getLogger("aam.data")
N_LIST = 10


@dataclass
class RarefactionInfo:
    """What rarefaction did: depth, seed, samples kept and the IDs of those dropped (under the depth)."""

    depth: int
    seed: int | None
    n_input: int
    n_kept: int
    dropped_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _not_biom(path: Path) -> InputError:
    return InputError(
        f"{path} is not a BIOM 2.x table (neither HDF5 nor JSON); pass a BIOM file or a QIIME 2 FeatureTable "
        "(.qza), or convert a TSV with `biom convert -i table.tsv -o table.biom --to-hdf5`"
    )


def _from_bytes(data: bytes, path: Path) -> biom.Table:
    if data[:8] == HDF5_MAGIC:
        with h5py.File(io.BytesIO(data), "r") as f:
            return biom.Table.from_hdf5(f)
    if data.lstrip()[:1] == b"{":
        return biom.Table.from_json(json.loads(data.decode("utf-8")))
    raise _not_biom(path)


def _qza_member(path: Path, suffixes: tuple[str, ...], what: str) -> bytes:
    """Bytes of the first `*/data/<file>` member of a QIIME 2 archive whose name ends with `suffixes`."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if "/data/" in n and n.endswith(suffixes)]
            if not names:
                raise InputError(f"{path} holds no {what} (*/data/*{suffixes[0]}); export the right QIIME 2 artifact")
            return zf.read(sorted(names)[0])
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path} is not a QIIME 2 artifact (not a zip file); pass a .qza, .biom or FASTA") from exc


def load_table(path: str | Path) -> biom.Table:
    """Read a BIOM table (HDF5 or JSON) or a QIIME 2 FeatureTable .qza; rejects empty tables."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table file {path} does not exist; check the --table path")
    try:
        if path.suffix.lower() == ".qza":
            table = _from_bytes(_qza_member(path, (".biom",), "BIOM table"), path)
        else:
            with open(path, "rb") as fh:
                head = fh.read(256)
            if head[:8] == HDF5_MAGIC:
                with h5py.File(path, "r") as f:
                    table = biom.Table.from_hdf5(f)
            elif head.lstrip()[:1] == b"{":
                table = _from_bytes(path.read_bytes(), path)
            else:
                raise _not_biom(path)
    except InputError:
        raise
    except Exception as exc:  # biom raises many types (TypeError, KeyError, OSError, ...) on bad files
        raise InputError(
            f"{path} is not a readable BIOM table ({type(exc).__name__}: {str(exc)[:100]}); "
            "pass a BIOM 2.x file (HDF5 or JSON) or a QIIME 2 FeatureTable .qza"
        ) from exc
    n_features, n_samples = table.shape
    if n_features == 0 or n_samples == 0 or table.nnz == 0:
        raise InputError(
            f"table {path} is empty ({n_features} features x {n_samples} samples, {table.nnz} non-zero counts); "
            "pass a table with counts"
        )
    return table


def hdf5_sample_count(path: str | Path) -> int | None:
    """Samples of an HDF5 BIOM table (read from its header, not its counts); None for other formats."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table file {path} does not exist; check the --table path")
    with open(path, "rb") as fh:
        if fh.read(8) != HDF5_MAGIC:
            return None
    with h5py.File(path, "r") as f:
        return int(f["sample/ids"].shape[0])


def _decoded(ids: np.ndarray) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ids]


def hdf5_feature_ids(path: str | Path) -> list[str]:
    """Feature IDs of an HDF5 BIOM table, in file order."""
    with h5py.File(path, "r") as f:
        return _decoded(f["observation/ids"][:])


def read_hdf5_samples(path: str | Path, lo: int, hi: int, feature_ids: list[str] | None = None) -> biom.Table:
    """Samples lo:hi (file order) of an HDF5 BIOM table, reading only their counts: the table's sample-major
    CSR arrays are sliced on disk (one read each), so memory grows with the chunk, not with the table.
    `feature_ids` (hdf5_feature_ids) saves re-reading them for every chunk."""
    feature_ids = hdf5_feature_ids(path) if feature_ids is None else feature_ids
    with h5py.File(path, "r") as f:
        indptr = f["sample/matrix/indptr"][lo:hi + 1].astype(np.int64)
        start, end = int(indptr[0]), int(indptr[-1])
        data = f["sample/matrix/data"][start:end]
        indices = f["sample/matrix/indices"][start:end]
        sample_ids = _decoded(f["sample/ids"][lo:hi])
    from scipy.sparse import csc_matrix

    matrix = csc_matrix((data, indices, indptr - start), shape=(len(feature_ids), hi - lo))
    table = biom.Table(matrix, feature_ids, sample_ids)
    return table.filter(lambda v, _i, _m: bool(np.any(v)), axis="observation", inplace=False)


def sample_totals(table: biom.Table) -> np.ndarray:
    """Reads per sample, in table order."""
    return np.asarray(table.sum(axis="sample"), dtype=np.float64)


def under_depth(ids: list[str], totals: np.ndarray, depth: int, where: str) -> list[str]:
    """The samples with fewer than `depth` reads (logged), which rarefaction drops; InputError when that is
    every sample. `where` names the table in messages ("table t.biom")."""
    if totals.size == 0 or depth > totals.max():
        largest = int(totals.max()) if totals.size else 0
        raise InputError(
            f"rarefaction depth {depth} is above every sample of {where} (largest sample total {largest}); "
            f"pass --rarefy-depth {largest} or less"
        )
    dropped = [s for s, t in zip(ids, totals, strict=True) if t < depth]
    if dropped:
        log.warning(
            "rarefaction to %d reads drops %d of %d samples with fewer reads (e.g. %s)",
            depth, len(dropped), len(ids), ", ".join(dropped[:5]),
        )  # fmt: skip
    return dropped


def rarefy(table: biom.Table, depth: int, seed: int | None, path: str | Path | None = None) -> tuple[biom.Table, RarefactionInfo]:
    """Subsample every sample to `depth` reads without replacement (seeded); samples under it are dropped.

    Features left with no reads are removed. Returns the new table and a RarefactionInfo to record.
    """
    where = f"table {path}" if path else "the table"
    if depth < 1:
        raise InputError(f"rarefaction depth must be a positive number of reads (got {depth}); pass --rarefy-depth N")
    ids = [str(s) for s in table.ids(axis="sample")]
    dropped = under_depth(ids, sample_totals(table), depth, where)
    out = table.subsample(int(depth), axis="sample", by_id=False, seed=seed)
    out = out.remove_empty(axis="observation", inplace=False)
    info = RarefactionInfo(depth=int(depth), seed=seed, n_input=len(ids), n_kept=int(out.shape[1]), dropped_ids=dropped)
    return out, info
