"""Target transforms (fit on train only), class label and categorical-column encoders; all serialisable."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aam.errors import AAMError, InputError

TRANSFORMS = ("none", "minmax", "zscore", "log-minmax", "log-zscore")


def _log1p(y: Any) -> Any:
    if isinstance(y, np.ndarray | float | int | np.floating):
        return np.log1p(y)
    return y.log1p()  # torch.Tensor


def _expm1(y: Any) -> Any:
    """exp(y) - 1 with y clamped at 88 (exp overflows float32 above it)."""
    if isinstance(y, np.ndarray | float | int | np.floating):
        return np.expm1(np.minimum(y, 88.0))
    return y.clamp(max=88.0).expm1()


class TargetTransform:
    """y -> (f(y) - shift) / scale with f = identity or log(1 + y); fitted on training targets only.

    kinds: none, minmax ([min, max] -> [0, 1]), zscore, log-minmax, log-zscore. Works on numpy arrays and
    torch tensors (inverse_transform on model outputs).
    """

    def __init__(self, kind: str = "none", shift: float = 0.0, scale: float = 1.0, fitted: bool = False) -> None:
        if kind not in TRANSFORMS:
            raise AAMError(f"target transform must be one of {', '.join(TRANSFORMS)} (got {kind!r})")
        self.kind = kind
        self.shift = float(shift)
        self.scale = float(scale)
        self.fitted = fitted or kind == "none"

    @property
    def log(self) -> bool:
        return self.kind.startswith("log-")

    def fit(self, y: np.ndarray, column: str = "target") -> TargetTransform:
        y = np.asarray(y, dtype=np.float64)
        y = y[np.isfinite(y)]
        if y.size == 0:
            raise InputError(f"no training values for {column!r} to fit the {self.kind} transform; check the metadata column")
        if self.log:
            if (y <= -1).any():
                raise InputError(
                    f"column {column!r} has values <= -1 (min {y.min():.4g}); log transforms need y > -1, "
                    "use --target-transform zscore or minmax"
                )
            y = np.log1p(y)
        if self.kind.endswith("minmax"):
            lo, hi = float(y.min()), float(y.max())
            self.shift, self.scale = lo, (hi - lo) if hi > lo else 1.0
        elif self.kind.endswith("zscore"):
            sd = float(y.std())
            self.shift, self.scale = float(y.mean()), sd if sd > 0 else 1.0
        self.fitted = True
        return self

    def _check(self) -> None:
        if not self.fitted:
            raise AAMError(f"the {self.kind} target transform is used before fit(); fit it on the training targets")

    def transform(self, y: Any) -> Any:
        self._check()
        if self.log:
            y = _log1p(y)
        return (y - self.shift) / self.scale

    def inverse_transform(self, z: Any) -> Any:
        self._check()
        y = z * self.scale + self.shift
        return _expm1(y) if self.log else y

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift, "scale": self.scale, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetTransform:
        return cls(d["kind"], d.get("shift", 0.0), d.get("scale", 1.0), d.get("fitted", True))


class ColumnTransforms:
    """One TargetTransform per column of a multi-output regression target y [N, T] (fitted column by column)."""

    def __init__(self, columns: Sequence[str], transforms: Sequence[TargetTransform]) -> None:
        if len(columns) != len(transforms):
            raise AAMError(f"{len(columns)} target columns but {len(transforms)} transforms")
        self.columns = list(columns)
        self.transforms = list(transforms)

    @classmethod
    def fit(cls, kind: str, y: np.ndarray, columns: Sequence[str]) -> ColumnTransforms:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), len(columns))
        return cls(columns, [TargetTransform(kind).fit(y[:, j], c) for j, c in enumerate(columns)])

    def _apply(self, y: Any, inverse: bool) -> Any:
        cols = [(t.inverse_transform if inverse else t.transform)(y[:, j]) for j, t in enumerate(self.transforms)]
        if isinstance(y, np.ndarray):
            return np.stack(cols, axis=1)
        import torch

        return torch.stack(cols, dim=1)

    def transform(self, y: Any) -> Any:
        return self._apply(y, inverse=False)

    def inverse_transform(self, z: Any) -> Any:
        return self._apply(z, inverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "transforms": [t.to_dict() for t in self.transforms]}


def transform_from_dict(d: dict[str, Any]) -> TargetTransform | ColumnTransforms:
    """A checkpoint's target transform: one column (TargetTransform) or several (ColumnTransforms)."""
    if "columns" in d:
        return ColumnTransforms(d["columns"], [TargetTransform.from_dict(t) for t in d["transforms"]])
    return TargetTransform.from_dict(d)


def _as_str(values: Iterable[Any]) -> list[str]:
    return [str(v).strip() for v in values]


class LabelEncoder:
    """Class labels (read as strings) -> 0..K-1 in sorted order; an unseen label is an InputError."""

    def __init__(self, classes: Sequence[str] | None = None, column: str = "target") -> None:
        self.classes: list[str] = list(classes) if classes is not None else []
        self.column = column
        self._index = {c: i for i, c in enumerate(self.classes)}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def fit(self, labels: Iterable[Any]) -> LabelEncoder:
        vals = sorted({v for v in _as_str(v for v in labels if not pd.isna(v))})
        if len(vals) < 2:
            raise InputError(
                f"column {self.column!r} has {len(vals)} class(es) among the training samples ({', '.join(vals)}); "
                "classification needs at least 2"
            )
        self.classes = vals
        self._index = {c: i for i, c in enumerate(vals)}
        return self

    def transform(self, labels: Iterable[Any], sample_ids: Sequence[str] | None = None) -> np.ndarray:
        vals = _as_str(labels)
        try:
            return np.fromiter((self._index[v] for v in vals), dtype=np.int64, count=len(vals))
        except KeyError:
            k = next(i for i, v in enumerate(vals) if v not in self._index)
            who = f" (sample {sample_ids[k]})" if sample_ids is not None else ""
            raise InputError(
                f"label {vals[k]!r}{who} of column {self.column!r} was not seen in training "
                f"(classes: {', '.join(self.classes[:10])}); drop those samples or retrain with them"
            ) from None

    def inverse_transform(self, idx: Iterable[int]) -> list[str]:
        return [self.classes[int(i)] for i in idx]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "column": self.column}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelEncoder:
        return cls(d["classes"], d.get("column", "target"))


class CategoryEncoder:
    """Categorical conditioning columns: per column, sorted training values -> 1..N; 0 = unknown/missing."""

    def __init__(self, categories: dict[str, list[str]] | None = None) -> None:
        self.categories: dict[str, list[str]] = dict(categories or {})
        self._maps = {c: {v: i + 1 for i, v in enumerate(vals)} for c, vals in self.categories.items()}

    @property
    def columns(self) -> list[str]:
        return list(self.categories)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table size per column (N values + the 0 = unknown code)."""
        return [len(v) + 1 for v in self.categories.values()]

    def fit(self, md: pd.DataFrame, columns: Sequence[str]) -> CategoryEncoder:
        from aam.data.metadata import require_columns

        require_columns(md, columns)
        for col in columns:
            vals = sorted(set(_as_str(md[col].dropna())))
            if not vals:
                raise InputError(f"categorical column {col!r} has only missing values in the training samples; drop it")
            self.categories[col] = vals
            self._maps[col] = {v: i + 1 for i, v in enumerate(vals)}
        return self

    def transform(self, md: pd.DataFrame, sample_ids: Sequence[str]) -> np.ndarray:
        """Codes [n_samples, n_columns] int64; unseen, missing or absent samples get 0."""
        out = np.zeros((len(sample_ids), len(self.categories)), dtype=np.int64)
        for j, col in enumerate(self.categories):
            if col not in md.columns:
                from aam.data.metadata import require_columns

                require_columns(md, [col])
            raw = md[col].reindex(list(sample_ids))
            m = self._maps[col]
            out[:, j] = [0 if pd.isna(v) else m.get(str(v).strip(), 0) for v in raw.tolist()]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"categories": {c: list(v) for c, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CategoryEncoder:
        return cls(d["categories"])
