"""Train/validation split of samples: seeded, optionally grouped (no group on both sides) and stratified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from aam.errors import AAMError, InputError


def split_samples(
    sample_ids: Sequence[str],
    val_fraction: float,
    seed: int,
    groups: Sequence[object] | None = None,
    stratify: Sequence[object] | None = None,
) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids), each in input order.

    groups: one value per sample (e.g. host_subject_id); whole groups go to one side. A missing group value
    makes the sample its own group. stratify: one label per sample; the split is done per label (with
    groups, per the group's most common label) so both sides keep the label mix.
    """
    ids = [str(s) for s in sample_ids]
    n = len(ids)
    if not 0.0 < val_fraction < 1.0:
        raise AAMError(f"val_fraction must be between 0 and 1 (got {val_fraction}); e.g. --test-size 0.2")
    for name, vals in (("groups", groups), ("stratify", stratify)):
        if vals is not None and len(vals) != n:
            raise AAMError(f"{name} has {len(vals)} values for {n} samples")
    rng = np.random.default_rng(seed)
    if groups is None:
        unit = np.arange(n)
    else:
        g = pd.Series(list(groups), dtype=object)
        g = g.where(g.notna(), pd.Series([f"\0sample:{i}" for i in range(n)]))
        unit = pd.factorize(g.astype(str), sort=True)[0]
    n_units = int(unit.max()) + 1 if n else 0
    unit_size = np.bincount(unit, minlength=n_units)
    if stratify is None:
        unit_label = np.zeros(n_units, dtype=np.int64)
    else:
        lab = pd.factorize(pd.Series([str(s) for s in stratify]), sort=True)[0]
        # Most common label per unit (ties: smallest label code).
        table = np.zeros((n_units, int(lab.max()) + 1 if n else 1), dtype=np.int64)
        np.add.at(table, (unit, lab), 1)
        unit_label = table.argmax(axis=1)
    val_unit = np.zeros(n_units, dtype=bool)
    for label in np.unique(unit_label):
        units = rng.permutation(np.flatnonzero(unit_label == label))
        target = val_fraction * unit_size[units].sum()
        cum = np.cumsum(unit_size[units])
        # Smallest prefix of shuffled units whose size reaches the target (at least one unit when possible).
        k = int(np.searchsorted(cum, target - 1e-9)) + 1 if target > 0 else 0
        k = min(k, len(units) - 1) if len(units) > 1 else 0
        val_unit[units[:k]] = True
    is_val = val_unit[unit] if n else np.zeros(0, dtype=bool)
    train = [s for s, v in zip(ids, is_val, strict=True) if not v]
    val = [s for s, v in zip(ids, is_val, strict=True) if v]
    if not train or not val:
        what = f"{n_units} groups" if groups is not None else f"{n} samples"
        raise InputError(
            f"the split of {what} with val_fraction={val_fraction} leaves {len(train)} training and "
            f"{len(val)} validation samples; use more samples (or groups) or change --test-size"
        )
    return train, val


def kfold_samples(
    sample_ids: Sequence[str],
    k: int,
    seed: int,
    groups: Sequence[object] | None = None,
    stratify: Sequence[object] | None = None,
) -> list[list[str]]:
    """K test folds (each in input order) that cover every sample once: seeded, whole groups per fold (a
    missing group value makes the sample its own group), and with `stratify` each fold keeps the label mix."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    ids = np.array([str(s) for s in sample_ids], dtype=object)
    if k < 2:
        raise AAMError(f"--folds must be at least 2, got {k}")
    g = None
    if groups is not None:
        s = pd.Series(list(groups), dtype=object)
        g = s.where(s.notna(), pd.Series([f"\0sample:{i}" for i in range(len(ids))])).astype(str).to_numpy()
    units = len(set(g)) if g is not None else len(ids)
    if units < k:
        what = "groups" if g is not None else "samples"
        raise InputError(f"{k} folds need at least {k} {what}; there are {units}. Use fewer --folds")
    y = None if stratify is None else np.array([str(v) for v in stratify])
    if g is not None and y is not None:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    elif g is not None:  # GroupKFold shuffles only in newer scikit-learn: permute the groups' order instead
        rng = np.random.default_rng(seed)
        names = np.unique(g)
        order = dict(zip(names, rng.permutation(len(names)), strict=True))
        g = np.array([order[x] for x in g])
        splitter = GroupKFold(n_splits=k)
    elif y is not None:
        if np.unique(y, return_counts=True)[1].min() < k:
            splitter = KFold(n_splits=k, shuffle=True, random_state=seed)  # a class too small to stratify
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [ids[np.sort(test)].tolist() for _, test in splitter.split(ids, y, g)]
    return folds


def read_ids(path: str | Path) -> list[str]:
    """Sample IDs listed one per line (a run's train_samples.txt / val_samples.txt, or any such list)."""
    ids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path} lists no sample IDs; pass the train_samples.txt / val_samples.txt of a run")
    return ids
