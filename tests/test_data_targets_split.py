"""Target transforms, label/category encoders (serialisable), and grouped/stratified splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from aam.data.split import split_samples
from aam.data.targets import TRANSFORMS, CategoryEncoder, LabelEncoder, TargetTransform
from aam.errors import AAMError, InputError


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_transform_roundtrip_and_serialise(kind: str) -> None:
    train = np.array([0.5, 2.0, 10.0, 3.0])
    t = TargetTransform(kind).fit(train)
    z = t.transform(train)
    np.testing.assert_allclose(t.inverse_transform(z), train, rtol=1e-12)
    if kind.endswith("minmax"):
        assert z.min() == pytest.approx(0.0) and z.max() == pytest.approx(1.0)
    if kind.endswith("zscore"):
        assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    t2 = TargetTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_allclose(t2.transform(np.array([4.0])), t.transform(np.array([4.0])))
    zt = torch.tensor(z, dtype=torch.float64)
    np.testing.assert_allclose(t.inverse_transform(zt).numpy(), train, rtol=1e-12)


def test_transform_fit_on_train_only_and_errors() -> None:
    t = TargetTransform("minmax").fit(np.array([0.0, 10.0, np.nan]))
    assert t.transform(np.array([20.0]))[0] == pytest.approx(2.0)  # val value outside train range is not clipped
    with pytest.raises(AAMError, match="before fit"):
        TargetTransform("zscore").transform(np.array([1.0]))
    with pytest.raises(InputError, match="log transforms need y > -1"):
        TargetTransform("log-zscore").fit(np.array([-2.0, 1.0]), column="temp")
    with pytest.raises(AAMError, match="must be one of"):
        TargetTransform("log")
    const = TargetTransform("zscore").fit(np.array([3.0, 3.0]))
    assert const.transform(np.array([3.0]))[0] == 0.0


def test_label_encoder() -> None:
    enc = LabelEncoder(column="ibd").fit(["Crohns", "Control", np.nan, "Control", 1])
    assert enc.classes == ["1", "Control", "Crohns"]
    assert enc.transform(["Crohns", "Control"]).tolist() == [2, 1]
    assert enc.inverse_transform([2, 0]) == ["Crohns", "1"]
    enc2 = LabelEncoder.from_dict(enc.to_dict())
    assert enc2.n_classes == 3 and enc2.transform(["1"]).tolist() == [0]
    with pytest.raises(InputError, match=r"label 'UC' \(sample S9\) of column 'ibd' was not seen in training"):
        enc.transform(["Control", "UC"], sample_ids=["S1", "S9"])
    with pytest.raises(InputError, match="at least 2"):
        LabelEncoder().fit(["a", "a"])


def test_category_encoder() -> None:
    md = pd.DataFrame({"site": ["gut", "oral", np.nan, "skin"], "sex": ["f", "m", "f", np.nan]}, index=["A", "B", "C", "D"])
    enc = CategoryEncoder().fit(md.loc[["A", "B", "C"]], ["site", "sex"])
    assert enc.categories == {"site": ["gut", "oral"], "sex": ["f", "m"]}
    assert enc.cardinalities == [3, 3]
    codes = enc.transform(md, ["D", "A", "B", "C", "Z"])
    assert codes.tolist() == [[0, 0], [1, 1], [2, 2], [0, 1], [0, 0]]  # unseen 'skin', missing, absent -> 0
    assert CategoryEncoder.from_dict(json.loads(json.dumps(enc.to_dict()))).transform(md, ["B"]).tolist() == [[2, 2]]
    with pytest.raises(InputError, match="did you mean 'site'"):
        CategoryEncoder().fit(md, ["sites"])


def test_split_deterministic_and_disjoint() -> None:
    ids = [f"S{i}" for i in range(100)]
    tr, va = split_samples(ids, 0.2, seed=1)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va)
    assert split_samples(ids, 0.2, seed=1) == (tr, va)
    assert split_samples(ids, 0.2, seed=2) != (tr, va)


def test_split_with_groups() -> None:
    ids = [f"S{i}" for i in range(120)]
    subjects = [f"subj{i % 24}" for i in range(120)]
    tr, va = split_samples(ids, 0.2, seed=0, groups=subjects)
    g = dict(zip(ids, subjects, strict=True))
    assert not {g[s] for s in tr} & {g[s] for s in va}
    assert 20 <= len(va) <= 30
    # Missing group values: each sample is its own group.
    tr, va = split_samples(ids[:10], 0.3, seed=0, groups=[None] * 10)
    assert len(va) == 3


def test_split_stratified() -> None:
    ids = [f"S{i}" for i in range(100)]
    labels = ["a"] * 80 + ["b"] * 20
    tr, va = split_samples(ids, 0.25, seed=3, stratify=labels)
    lab = dict(zip(ids, labels, strict=True))
    assert sum(lab[s] == "b" for s in va) == 5 and sum(lab[s] == "a" for s in va) == 20


def test_split_empty_side() -> None:
    with pytest.raises(InputError, match=r"1 groups with val_fraction=0.2 leaves 5 training and 0 validation"):
        split_samples([f"S{i}" for i in range(5)], 0.2, seed=0, groups=["x"] * 5)
    with pytest.raises(AAMError, match="between 0 and 1"):
        split_samples(["a", "b"], 1.5, seed=0)


def test_log_inverse_clamped() -> None:
    t = TargetTransform("log-zscore").fit(np.array([1.0, 10.0, 100.0]))
    assert np.isfinite(t.inverse_transform(np.array([1e6])))
    assert torch.isfinite(t.inverse_transform(torch.tensor([1e6], dtype=torch.float32))).all()
