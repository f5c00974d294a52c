"""Sample metadata (TSV): loading, sample-ID column detection, numeric targets, coverage checks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from aam.errors import InputError

# Accepted names of the sample-ID column (compared case-insensitively; QIIME 2 conventions + common ones).
SAMPLE_ID_COLUMNS = (
    "sample_id", "sample_name", "sampleid", "sample id", "sample-id", "#sampleid", "#sample id",
    "#sample-id", "#sample_id", "#sample_name", "id", "#id", "#otuid", "#otu id", "featureid",
    "feature id", "feature-id", "#q2:id",
)  # fmt: skip
# Spellings read as missing (case-insensitive, surrounding whitespace ignored).
MISSING_VALUES = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "not provided", "not collected", "not applicable",
     "restricted access", "missing", "unspecified"}
)  # fmt: skip
N_LIST = 10


def _is_missing(value: str) -> bool:
    v = value.strip().lower()
    return v in MISSING_VALUES or v.startswith("missing:")


def load_metadata(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a metadata TSV into a DataFrame of strings (NaN = missing) indexed by sample ID.

    The sample column is the first column when its name is a known sample-ID header (`sample_id`,
    `sample_name`, `#SampleID`, `id`, ...), otherwise the first column elsewhere with such a name.
    A QIIME 2 `#q2:types` row is dropped. `columns`, if given, must exist (closest names suggested).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"metadata file {path} does not exist; check the --metadata path")
    try:
        df = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
            comment=None, skip_blank_lines=True,
        )  # fmt: skip
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"metadata file {path} is not a readable tab-separated table ({exc}); save it as TSV") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if df.shape[1] == 0:
        raise InputError(f"metadata file {path} has no columns; it must be a tab-separated table with a header")
    names = [c.lower() for c in df.columns]
    if names[0] in SAMPLE_ID_COLUMNS:
        id_col = df.columns[0]
    else:
        hits = [c for c, lc in zip(df.columns, names, strict=True) if lc in SAMPLE_ID_COLUMNS]
        if not hits:
            shown = ", ".join(repr(c) for c in list(df.columns)[:5])
            raise InputError(
                f"metadata file {path} has no sample ID column (first columns: {shown}); "
                "name the first column 'sample_id' (or sample_name, #SampleID, id)"
            )
        id_col = hits[0]
    ids = df[id_col].str.strip()
    df = df.drop(columns=[id_col])
    df.index = pd.Index(ids, name="sample_id")
    # QIIME 2 directives such as '#q2:types' and other comment rows.
    df = df[~df.index.str.startswith("#")]
    df = df[df.index != ""]
    dup = df.index[df.index.duplicated()].unique()
    if len(dup):
        shown = ", ".join(list(dup[:N_LIST]))
        raise InputError(
            f"metadata file {path} has {len(dup)} duplicated sample ID(s) in column {id_col!r}: {shown}; "
            "keep one row per sample"
        )
    df = df.apply(lambda col: col.str.strip())
    missing = df.apply(lambda col: col.map(_is_missing))
    df = df.mask(missing)
    df.attrs["path"] = str(path)
    if columns:
        require_columns(df, columns, path)
    return df


def require_columns(md: pd.DataFrame, columns: Iterable[str], path: str | Path | None = None) -> None:
    """InputError naming the first requested column that `md` lacks, with the closest existing names."""
    path = path or md.attrs.get("path", "metadata")
    for col in columns:
        if col not in md.columns:
            close = difflib.get_close_matches(col, [str(c) for c in md.columns], n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "check the column name"
            raise InputError(f"metadata file {path} has no column {col!r}; {hint}")


def require_samples(md: pd.DataFrame, sample_ids: Sequence[str], path: str | Path | None = None) -> None:
    """InputError listing up to 10 of `sample_ids` (table samples) that have no metadata row."""
    path = path or md.attrs.get("path", "metadata")
    present = md.index.isin(list(sample_ids))
    if present.sum() == len(set(sample_ids)):
        return
    have = set(md.index)
    missing = [s for s in sample_ids if s not in have]
    raise InputError(
        f"{len(missing)} table sample(s) are missing from metadata file {path}: "
        f"{', '.join(missing[:N_LIST])}{' ...' if len(missing) > N_LIST else ''}; "
        "add them to the metadata or filter the table to the metadata samples"
    )


def numeric_target(
    md: pd.DataFrame, column: str, sample_ids: Sequence[str], path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Column `column` for `sample_ids` as float64, and a mask that is False where the value is missing.

    Samples absent from `md` count as missing. Non-numeric values (or inf) raise an InputError that lists
    them with their sample IDs; the caller reports and excludes the masked samples.
    """
    path = path or md.attrs.get("path", "metadata")
    require_columns(md, [column], path)
    raw = md[column].reindex(list(sample_ids))
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = (raw.notna().to_numpy() & ~np.isfinite(values))
    if bad.any():
        ids = raw.index[bad]
        pairs = ", ".join(f"{i}={raw[i]!r}" for i in ids[:N_LIST])
        raise InputError(
            f"metadata file {path} column {column!r} has {int(bad.sum())} non-numeric value(s): {pairs}; "
            "fix them, mark them missing, or treat the column as categorical (--classifier)"
        )
    mask = np.isfinite(values)
    return values, mask


def column_values(md: pd.DataFrame, column: str, sample_ids: Sequence[str],
                  path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(values, mask, numeric): float64 values when every present value is a finite number, else strings."""
    values, mask = categorical_values(md, column, sample_ids)
    present = pd.to_numeric(pd.Series(values[mask], dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(present).all():
        return (*numeric_target(md, column, sample_ids, path), True)
    return values, mask, False


def categorical_values(md: pd.DataFrame, column: str, sample_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column `column` for `sample_ids` as an object array of strings, and a mask (False = missing)."""
    require_columns(md, [column])
    raw = md[column].reindex(list(sample_ids))
    mask = raw.notna().to_numpy()
    return raw.astype(object).to_numpy(), mask


def group_labels(md: pd.DataFrame, column: str, sample_ids: Sequence[str]) -> np.ndarray:
    """Column `column` for `sample_ids` as strings to group by, '(missing)' where a sample has no value."""
    values, mask = categorical_values(md, column, sample_ids)
    return np.array([str(v) if m else "(missing)" for v, m in zip(values, mask, strict=True)], dtype=object)
