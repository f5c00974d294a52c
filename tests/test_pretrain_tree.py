"""`aam pretrain --tree`: UniFrac batch targets computed on the fly (TreeDistances) instead of a matrix.

Every per-batch target block must equal the matching entries of the full matrix that `aam.ops.unifrac`
computes on the same rarefied table. Tiny generated data (aam.data.synthetic) and a tiny model.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import skbio
import torch

from aam.cli import options as O
from aam.cli.main import main
from aam.cli.pretrain import pretrain
from aam.data import synthetic
from aam.data.dataset import collate
from aam.data.prepare import Preprocessing, make_dataset, prepare_table
from aam.ops.unifrac import TreeDistances, unifrac
from aam.workflows import distances
from aam.workflows.requests import DistanceOptions

DEPTH, SEED, MAX_BP = 150, 42, 32
MODEL = ["--embedding-dim", "16", "--attention-heads", "2", "--attention-layers", "1", "--device", "cpu",
         "--batch-size", "6", "--max-bp", str(MAX_BP), "--token-limit", "16", "--log-every", "1",
         "--rarefy-depth", str(DEPTH), "--seed", str(SEED), "--epochs", "1", "--patience", "0"]
METRICS = [("unweighted", None), ("weighted_normalized", None), ("weighted_unnormalized", None),
           ("generalized", 0.3)]
TOL = 1e-6  # targets travel as float32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    ds = synthetic.make_dataset(30, n_features=40, seed=3, min_len=20, max_len=30, richness=12, mean_depth=600.0)
    return synthetic.write_dataset(ds, tmp_path_factory.mktemp("tree_data"))


@pytest.fixture(scope="module")
def prepared(data):
    return prepare_table(data["table"], None, DEPTH, SEED, MAX_BP)


def _load(table, tree, ids, prepared, pre, num_workers: int = 0, unifrac_targets: str = "all", **options):
    """The run's distance source for --tree (resolved as the CLI resolves it); all ASVs unless told."""
    opts = DistanceOptions(tree=str(tree), unifrac_targets=unifrac_targets, **options)
    opts = distances.resolve(opts, "abundance", required=True)
    return distances.load(opts, str(table), num_workers, ids, prepared, pre)


def _one_error_line(capsys, only: bool = False) -> str:
    """The one `error:` line (no traceback); `only`: stderr holds nothing else (failed before any log)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    if only:
        assert err == errors, err
    return errors[0]


@pytest.mark.parametrize(("metric", "alpha"), METRICS)
def test_collate_targets_equal_full_matrix(data, prepared, metric, alpha):
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    pre = Preprocessing(rarefy_depth=DEPTH, max_bp=MAX_BP, token_limit=16)
    source = _load(data["table"], data["tree"], ids, prepared, pre, unifrac_metric=metric, unifrac_alpha=alpha)
    assert isinstance(source, TreeDistances) and source.ids == ids
    assert pre.extra["unifrac"]["source"] == "tree" and pre.extra["unifrac"]["metric"] == metric
    assert pre.extra["unifrac"]["alpha"] == alpha
    full = unifrac(prepared.table, data["tree"], metric, alpha)
    assert full.ids == ids
    dataset = make_dataset(prepared, ids, pre)
    rng = np.random.default_rng(0)
    for size in (2, 7, len(ids)):
        pick = [int(i) for i in rng.choice(len(ids), size=size, replace=False)]
        batch = collate([dataset[i] for i in pick], distances=source)
        want = full.pairs(batch["sample_ids"])
        assert batch["sample_ids"] == [ids[i] for i in pick]
        np.testing.assert_allclose(batch["unifrac_target"].double().numpy(), want, rtol=TOL, atol=TOL)
        assert want[~np.eye(size, dtype=bool)].max() > 0  # a real comparison, not all zeros


def test_targets_in_dataloader_workers(data, prepared):
    """The collate function runs in a worker process (threads=1 there) and still gives the exact blocks."""
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    pre = Preprocessing(rarefy_depth=DEPTH, max_bp=MAX_BP, token_limit=16)
    source = _load(data["table"], data["tree"], ids, prepared, pre, num_workers=1,
                   unifrac_metric="weighted_normalized")
    assert source.threads == 1
    full = unifrac(prepared.table, data["tree"], "weighted_normalized")
    loader = torch.utils.data.DataLoader(make_dataset(prepared, ids, pre), batch_size=8, shuffle=True,
                                         num_workers=1, collate_fn=functools.partial(collate, distances=source),
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        np.testing.assert_allclose(batch["unifrac_target"].double().numpy(), full.pairs(batch["sample_ids"]),
                                   rtol=TOL, atol=TOL)
        seen += batch["sample_ids"]
    assert sorted(seen) == sorted(ids)


def test_cli_pretrain_from_tree(data, tmp_path, monkeypatch):
    blocks: list[tuple[list[str], np.ndarray]] = []
    original = TreeDistances.pairs

    def recording(self, sample_ids):
        out = original(self, sample_ids)
        blocks.append((list(sample_ids), out.copy()))
        return out

    monkeypatch.setattr(TreeDistances, "pairs", recording)
    out = tmp_path / "pre"
    rc = main(["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--unifrac-metric",
               "weighted", "--output-dir", str(out), *MODEL])
    assert rc == 0
    ck = torch.load(out / "checkpoints/best.pt", weights_only=True)
    src = ck["preprocessing"]["extra"]["unifrac"]
    assert src == {"source": "tree", "tree": str(Path(data["tree"]).resolve()), "metric": "weighted_normalized",
                   "alpha": None, "drop_missing_features": False, "targets": "visible"}
    hist = ck["trainer_state"]["history"]
    assert hist and np.isfinite(hist[-1]["val_unifrac_loss"])
    # Train and validation batches, every one checked against the full matrix of the same rarefied table.
    full = unifrac(prepare_table(data["table"], None, DEPTH, SEED, MAX_BP).table, data["tree"], "weighted_normalized")
    assert len(blocks) >= 2
    for ids, got in blocks:
        np.testing.assert_allclose(got, full.pairs(ids), rtol=1e-12, atol=1e-12)


def test_resume_reuses_the_recorded_tree(data, tmp_path):
    """`--resume` alone continues a --tree run with the tree and metric its checkpoint recorded."""
    out = tmp_path / "pre"
    base = ["pretrain", "--table", str(data["table"]), "--output-dir", str(out), *MODEL]
    assert main([*base[:3], "--tree", str(data["tree"]), "--unifrac-metric", "weighted", *base[3:]]) == 0
    first = torch.load(out / "checkpoints/last.pt", weights_only=True)["preprocessing"]["extra"]["unifrac"]
    assert main([*base, "--epochs", "2", "--resume", str(out / "checkpoints/last.pt")]) == 0
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ck["preprocessing"]["extra"]["unifrac"] == first
    assert first["metric"] == "weighted_normalized"
    assert [row["epoch"] for row in ck["trainer_state"]["history"]][-1] == 2


def _top_k_table(table, k: int):
    """Each sample's k most abundant features (ties: lower table index first), the rest zeroed."""
    import biom

    m = table.matrix_data.toarray()
    out = np.zeros_like(m)
    for j in range(m.shape[1]):
        nz = np.flatnonzero(m[:, j])
        keep = nz[np.lexsort((nz, -m[nz, j]))][:k]
        out[keep, j] = m[keep, j]
    return biom.Table(out, table.ids(axis="observation"), table.ids(axis="sample"))


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_visible_targets_count_only_the_asvs_the_model_sees(data, prepared, metric):
    """--unifrac-targets visible: targets are UniFrac of the table cut to each sample's token-limit ASVs."""
    limit = 3
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    pre = Preprocessing(rarefy_depth=DEPTH, max_bp=MAX_BP, token_limit=limit)
    source = _load(data["table"], data["tree"], ids, prepared, pre, unifrac_metric=metric, unifrac_targets="visible")
    assert pre.extra["unifrac"]["targets"] == "visible"
    dataset = make_dataset(prepared, ids, pre)
    assert dataset.n_asvs().min() > limit  # every sample loses ASVs to the limit (richness 4-15 here)
    want = unifrac(_top_k_table(prepared.table, limit), data["tree"], metric)
    everything = unifrac(prepared.table, data["tree"], metric)
    batch = collate([dataset[i] for i in range(len(ids))], distances=source)
    got = batch["unifrac_target"].double().numpy()
    np.testing.assert_allclose(got, want.pairs(ids), rtol=TOL, atol=TOL)
    assert np.abs(got - everything.pairs(ids)).max() > 0.05  # the option changes the targets
    for i in range(len(ids)):  # the ASVs behind the targets are exactly the ones in the batch
        kept = np.flatnonzero(_top_k_table(prepared.table, limit).matrix_data[:, [i]].toarray().ravel())
        assert sorted(dataset[i]["features"].tolist()) == kept.tolist()


def test_visible_targets_refuse_random_sampling(data, tmp_path, capsys):
    rc = main(["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--unifrac-targets",
               "visible", "--asv-sampling", "random", "--output-dir", str(tmp_path / "o"), *MODEL])
    assert rc != 0
    line = _one_error_line(capsys, only=True)
    assert "--unifrac-targets visible" in line and "--asv-sampling" in line


def test_cli_visible_targets_recorded_and_resumed(data, tmp_path):
    out = tmp_path / "pre"
    base = ["pretrain", "--table", str(data["table"]), "--output-dir", str(out), *MODEL]
    assert main([*base[:3], "--tree", str(data["tree"]), "--unifrac-targets", "visible", *base[3:]]) == 0
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["preprocessing"]["extra"]["unifrac"][
        "targets"] == "visible"
    assert main([*base, "--epochs", "2", "--resume", str(out / "checkpoints/last.pt")]) == 0
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ck["preprocessing"]["extra"]["unifrac"]["targets"] == "visible"
    assert [row["epoch"] for row in ck["trainer_state"]["history"]][-1] == 2


def test_unifrac_metric_without_tree_is_an_error(data, tmp_path, capsys):
    """A precomputed matrix already has its metric: --unifrac-metric with it is refused, not ignored."""
    matrix = tmp_path / "d.tsv"
    assert main(["unifrac", "--table", str(data["table"]), "--tree", str(data["tree"]), "--output", str(matrix)]) == 0
    capsys.readouterr()
    rc = main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(matrix), "--unifrac-metric",
               "weighted", "--output-dir", str(tmp_path / "o"), *MODEL])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--unifrac-metric weighted_normalized applies only with --tree" in err[0]


def test_train_takes_tree(data, tmp_path):
    out = tmp_path / "ft"
    rc = main(["train", "--ensemble", "1", "--table", str(data["table"]), "--metadata", str(data["metadata"]), "--metadata-column",
               "ph", "--tree", str(data["tree"]), "--output-dir", str(out), *MODEL])
    assert rc == 0
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ck["preprocessing"]["extra"]["unifrac"]["source"] == "tree"
    assert any("val_unifrac_loss" in row for row in ck["trainer_state"]["history"])


@pytest.mark.parametrize("which", ["both", "neither"])
def test_exactly_one_distance_source(data, tmp_path, capsys, which):
    src = ["--tree", str(data["tree"]), "--unifrac-matrix", str(tmp_path / "dm.h5")] if which == "both" else []
    rc = main(["pretrain", "--table", str(data["table"]), *src, "--output-dir", str(tmp_path / "o"), *MODEL])
    assert rc != 0
    line = _one_error_line(capsys, only=True)
    assert "--unifrac-matrix" in line and "--tree" in line


def test_alpha_needs_generalized(data, tmp_path, capsys):
    rc = main(["pretrain", "--table", str(data["table"]), "--tree", str(data["tree"]), "--unifrac-alpha", "0.5",
               "--output-dir", str(tmp_path / "o"), *MODEL])
    assert rc != 0 and "--unifrac-alpha" in _one_error_line(capsys, only=True)


def test_tree_options_need_tree(data, tmp_path, capsys):
    rc = main(["pretrain", "--table", str(data["table"]), "--unifrac-matrix", str(tmp_path / "dm.h5"),
               "--drop-missing-features", "--output-dir", str(tmp_path / "o"), *MODEL])
    assert rc != 0 and "only with --tree" in _one_error_line(capsys, only=True)


def test_tree_missing_features(data, prepared, tmp_path, capsys):
    tree = skbio.TreeNode.read(str(data["tree"]))
    tips = sorted(t.name for t in tree.tips())
    gone = tips[:3]
    small = tree.shear(tips[3:])
    small.write(str(tmp_path / "small.nwk"))
    args = ["pretrain", "--table", str(data["table"]), "--tree", str(tmp_path / "small.nwk"), *MODEL]
    rc = main([*args, "--output-dir", str(tmp_path / "o1")])
    assert rc != 0
    line = _one_error_line(capsys)
    assert str(data["table"]) in line and "--drop-missing-features" in line
    assert "3 of" in line and all(f in line for f in gone if f in set(prepared.table.ids(axis="observation")))
    rc = main([*args, "--drop-missing-features", "--output-dir", str(tmp_path / "o2")])
    assert rc == 0
    ck = torch.load(tmp_path / "o2/checkpoints/last.pt", weights_only=True)
    assert ck["preprocessing"]["extra"]["unifrac"]["drop_missing_features"] is True


@pytest.mark.parametrize(("given", "meant"), [("unifrac", "unweighted"), ("weighted", "weighted_normalized"),
                                               ("unweighted", "unweighted"), ("generalized", "generalized"),
                                               ("weighted_unnormalized", "weighted_unnormalized")])
def test_metric_aliases(given, meant):
    ctx = pretrain.make_context("pretrain", ["--table", "t.biom", "--tree", "t.nwk", "--output-dir", "o",
                                             "--unifrac-metric", given])
    assert ctx.params["unifrac_metric"] == meant
    assert O.METRIC_ALIASES == {"unifrac": "unweighted", "weighted": "weighted_normalized"}


@pytest.mark.realdata
def test_ibd_tree_targets(ibd_dir):
    """IBD: 129 ASVs are not in tree.nwk (an error naming them, or dropped); targets match the full matrix."""
    import biom

    from aam.errors import InputError

    subset = [str(s) for s in biom.load_table(str(ibd_dir / "table.biom")).ids()[:120]]
    prepared = prepare_table(ibd_dir / "table.biom", None, 1000, SEED, 100, sample_ids=subset)
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    pre = Preprocessing(rarefy_depth=1000, max_bp=100, token_limit=64)
    table, tree = ibd_dir / "table.biom", ibd_dir / "tree.nwk"
    with pytest.raises(InputError, match=r"table\.biom: \d+ of \d+ features are not tips .*--drop-missing-features"):
        _load(table, tree, ids, prepared, pre)
    source = _load(table, tree, ids, prepared, pre, drop_missing_features=True)
    full = unifrac(prepared.table, ibd_dir / "tree.nwk", "unweighted", drop_missing_features=True)
    dataset = make_dataset(prepared, ids, pre)
    batch = collate([dataset[i] for i in range(0, len(ids), 3)], distances=source)
    np.testing.assert_allclose(batch["unifrac_target"].double().numpy(), full.pairs(batch["sample_ids"]),
                               rtol=TOL, atol=TOL)
