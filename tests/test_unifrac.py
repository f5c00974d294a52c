"""Native UniFrac vs scikit-bio and the numpy reference; parsing, errors, batch targets, CLI."""

from __future__ import annotations

import io
import pickle
import sys

import numpy as np
import pytest

import aam.ops.unifrac  # noqa: F401
from aam.errors import AAMError, InputError
from aam.ops import registry
from aam.ops.registry import KernelRequest
from aam.ops.unifrac import TreeDistances, parse_newick, read_tree

U = sys.modules["aam.ops.unifrac"]  # (aam.ops.unifrac the attribute is the function)
pytestmark = pytest.mark.native()

def random_newick(n_tips: int, rng: np.random.Generator, root_length: float | None = None,
                  zero_frac: float = 0.05, polytomy_frac: float = 0.1) -> str:
    """A random rooted tree on tips t0..t{n-1} with random branch lengths (some zero, some polytomies)."""
    nodes = [f"t{i}" for i in range(n_tips)]

    def length() -> str:
        return "0" if rng.random() < zero_frac else f"{rng.exponential(0.1):.6g}"

    while len(nodes) > 1:
        k = 3 if len(nodes) >= 3 and rng.random() < polytomy_frac else 2
        pick = sorted(rng.choice(len(nodes), size=k, replace=False), reverse=True)
        kids = [nodes.pop(i) for i in pick]
        nodes.append("(" + ",".join(f"{c}:{length()}" for c in kids) + ")")
    root = nodes[0] if nodes[0].startswith("(") else f"({nodes[0]}:{length()})"
    return root + ("" if root_length is None else f":{root_length}") + ";"


def random_counts(n_samples: int, n_features: int, rng: np.random.Generator, density: float = 0.2) -> np.ndarray:
    """[features, samples] sparse-ish integer counts with one empty sample."""
    x = rng.poisson(rng.gamma(0.5, 20.0, size=(n_features, n_samples))) * (rng.random((n_features, n_samples)) < density)
    if n_samples > 2:
        x[:, 1] = 0
    return x.astype(np.float64)


def random_table(n_samples: int, n_features: int, rng: np.random.Generator, density: float = 0.2,
                 feature_ids: list[str] | None = None):
    import biom

    x = random_counts(n_samples, n_features, rng, density)
    fids = feature_ids or [f"t{i}" for i in range(n_features)]
    return biom.Table(x, fids, [f"s{i}" for i in range(n_samples)])


SKBIO = {
    "unweighted": ("unweighted_unifrac", {}),
    "weighted_normalized": ("weighted_unifrac", {"normalized": True}),
    "weighted_unnormalized": ("weighted_unifrac", {"normalized": False}),
}


def skbio_tree(newick: str):
    import skbio

    return skbio.TreeNode.read(io.StringIO(newick), format="newick")


def skbio_beta(table, newick: str, metric: str) -> np.ndarray:
    from skbio.diversity import beta_diversity

    name, kw = SKBIO[metric]
    x = table.matrix_data.T.toarray()
    return beta_diversity(name, x, list(table.ids()), taxa=list(table.ids("observation")),
                          tree=skbio_tree(newick), **kw).data


def case(seed: int, n_tips: int = 40, n_samples: int = 13, n_features: int = 30, root_length=None):
    rng = np.random.default_rng(seed)
    newick = random_newick(n_tips, rng, root_length=root_length)
    table = random_table(n_samples, n_features, rng)
    return newick, table


@pytest.mark.parametrize("seed,root_length", [(0, None), (1, 0.3), (2, None), (3, 1.0)])
@pytest.mark.parametrize("metric", list(SKBIO))
def test_matches_skbio(seed, root_length, metric):
    newick, table = case(seed, root_length=root_length)
    ref = skbio_beta(table, newick, metric)
    tree = parse_newick(newick)
    for backend in ("custom", "math"):
        dm = U.unifrac(table, tree, metric, backend=backend)
        assert dm.ids == list(table.ids())
        assert np.abs(dm.data - ref).max() <= 1e-9, backend
        assert np.array_equal(dm.data, dm.data.T) and (np.diag(dm.data) == 0).all()


@pytest.mark.parametrize("seed", [0, 4])
def test_faith_pd_matches_skbio(seed):
    from skbio.diversity import alpha_diversity

    newick, table = case(seed, root_length=0.2)
    x = table.matrix_data.T.toarray()
    ref = alpha_diversity("faith_pd", x, list(table.ids()), taxa=list(table.ids("observation")),
                          tree=skbio_tree(newick)).values
    for backend in ("custom", "math"):
        got = U.faith_pd(table, newick, backend=backend)
        assert list(got.index) == list(table.ids())
        assert np.abs(got.values - ref).max() <= 1e-9


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_generalized_matches_reference(alpha):
    newick, table = case(5, n_tips=60, n_samples=17, n_features=50)
    got = U.unifrac(table, newick, "generalized", alpha=alpha).data
    ref = U.unifrac(table, newick, "generalized", alpha=alpha, backend="math").data
    assert np.abs(got - ref).max() <= 1e-9
    if alpha == 1.0:
        wn = U.unifrac(table, newick, "weighted_normalized").data
        assert np.abs(got - wn).max() <= 1e-9


def test_generalized_formula_by_hand():
    """Two samples on a 3-tip tree, evaluated from Chen et al.'s formula directly."""
    import biom

    newick = "((a:1,b:2):0.5,c:3);"
    table = biom.Table(np.array([[1.0, 0.0], [1.0, 3.0], [2.0, 1.0]]), ["a", "b", "c"], ["x", "y"])
    p = np.array([0.25, 0.25, 0.5, 0.5])  # a, b, c, (a,b)
    q = np.array([0.0, 0.75, 0.25, 0.75])
    b = np.array([1.0, 2.0, 3.0, 0.5])
    s = p + q
    num = (b * s**0.5 * np.abs(p - q) / s).sum()
    den = (b * s**0.5).sum()
    got = U.unifrac(table, newick, "generalized", alpha=0.5).data
    assert abs(got[0, 1] - num / den) <= 1e-12


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized", "weighted_unnormalized", "generalized"])
def test_float32_close_to_float64(metric):
    newick, table = case(6, n_tips=80, n_samples=21, n_features=70)
    d64 = U.unifrac(table, newick, metric).data
    d32 = U.unifrac(table, newick, metric, dtype="float32").data
    assert d32.dtype == np.float32
    assert np.abs(d32 - d64).max() <= 1e-5 * max(1.0, np.abs(d64).max())


@pytest.mark.parametrize("n_samples", [1, 2, 3, 4, 9])
def test_small_and_even_sample_counts(n_samples):
    newick, table = case(7, n_samples=n_samples)
    for metric in ("unweighted", "weighted_normalized"):
        got = U.unifrac(table, newick, metric).data
        ref = U.unifrac(table, newick, metric, backend="math").data
        assert got.shape == (n_samples, n_samples)
        assert np.abs(got - ref).max() <= 1e-9


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized", "weighted_unnormalized", "generalized"])
def test_batch_targets_equal_full_matrix(metric):
    newick, table = case(8, n_tips=70, n_samples=30, n_features=60)
    full = U.unifrac(table, newick, metric)
    td = TreeDistances(table, newick, metric)
    assert td.ids == full.ids
    rng = np.random.default_rng(0)
    ids = [full.ids[i] for i in rng.permutation(len(full.ids))[:11]] + [full.ids[1]]  # includes the empty sample
    got = td.pairs(ids)
    assert got.dtype == np.float64 and got.shape == (12, 12)
    assert np.abs(got - full.pairs(ids)).max() <= 1e-9
    again = pickle.loads(pickle.dumps(td))
    assert np.array_equal(again.pairs(ids), got)
    with pytest.raises(InputError, match="nope"):
        td.pairs(["nope"])


def test_threads_give_same_result():
    newick, table = case(9, n_samples=25)
    a = U.unifrac(table, newick, "weighted_unnormalized", threads=1).data
    b = U.unifrac(table, newick, "weighted_unnormalized", threads=2).data
    assert np.array_equal(a, b)


def test_newick_features():
    text = " ( 'tip one':0.1 [a comment], 'it''s':2e-1, x , (y:1,z:2)'k__Bacteria; p__Fir':0.5 ) root ; "
    tree = parse_newick(text)
    assert tree.n_nodes == 7 and tree.n_tips == 5
    assert tree.parent[-1] == -1 and all(tree.parent[:-1] > np.arange(6))
    names = dict(zip(tree.names, tree.length, strict=True))
    assert names["tip one"] == 0.1 and names["it's"] == 0.2 and np.isnan(names["x"])
    assert names["k__Bacteria; p__Fir"] == 0.5 and names["root"] != names["root"]  # NaN root length
    assert set(tree.tip_index()) == {"tip one", "it's", "x", "y", "z"}


def test_deep_caterpillar_tree():
    n = 20000
    text = "(" * (n - 1) + "t0:1" + "".join(f",t{i}:1):1" for i in range(1, n)) + ";"
    tree = parse_newick(text)
    assert tree.n_tips == n
    import biom

    table = biom.Table(np.eye(3) + np.eye(3)[::-1], ["t0", f"t{n // 2}", f"t{n - 1}"], ["a", "b", "c"])
    for metric in ("unweighted", "weighted_normalized"):
        got = U.unifrac(table, tree, metric).data
        assert got[0, 1] > 0 and np.abs(got - U.unifrac(table, tree, metric, backend="math").data).max() <= 1e-9


@pytest.mark.parametrize("text,match", [
    ("((a,b),c);", "no branch lengths"),
    ("((a:1,b:1):1,a:2);", "duplicate tip names.*'a'"),
    ("((a:1,b:1):1,c:2;", "found ';' at character 17"),
    ("((a:1,b:1):1,c:2", "unclosed '\\(' opened at character 1"),
    ("((a:1,b:1):1,c:2));", "character 18"),
    ("(a:1,b:x);", "branch length after ':' at character 8"),
    ("(a:1,'b:2);", "unterminated quoted label at character 6"),
])
def test_bad_trees(text, match):
    with pytest.raises(InputError, match=match) as exc:
        parse_newick(text, source="t.nwk")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("t.nwk")


def test_table_tree_mismatch():
    newick, _ = case(10, n_tips=20)
    rng = np.random.default_rng(0)
    table = random_table(5, 14, rng, feature_ids=[f"t{i}" for i in range(12)] + ["ghost1", "ghost2"])
    with pytest.raises(InputError, match=r"2 of 14 features are not tips.*ghost1, ghost2.*drop-missing-features") as e:
        U.unifrac(table, newick)
    assert "\n" not in str(e.value)
    dropped = U.unifrac(table, newick, drop_missing_features=True).data
    kept = table.filter([f"t{i}" for i in range(12)], axis="observation", inplace=False)
    assert np.abs(dropped - U.unifrac(kept, newick).data).max() == 0
    with pytest.raises(AAMError, match="unknown UniFrac metric"):
        U.unifrac(kept, newick, "bray")
    with pytest.raises(AAMError, match="alpha applies only"):
        U.unifrac(kept, newick, "unweighted", alpha=0.3)
    with pytest.raises(AAMError, match=r"alpha must be in \[0, 1\]"):
        U.unifrac(kept, newick, "generalized", alpha=2)


def test_registered_backends():
    import torch

    names = [b.name for b in registry.backends("unifrac")]
    assert names == ["custom", "math"]
    assert registry.select("unifrac", "auto", KernelRequest("cpu", torch.float64)).name == "custom"


def test_cli_writes_h5_and_tsv(tmp_path):
    import h5py
    import pandas as pd
    from click.testing import CliRunner

    from aam.cli.main import cli

    newick, table = case(11, n_samples=9)
    (tmp_path / "t.nwk").write_text(newick)
    with open(tmp_path / "t.biom", "w") as f:
        table.to_json("test", direct_io=f)
    ref = U.unifrac(table, newick, "weighted_normalized")
    runner = CliRunner()
    for out in ("dm.h5", "dm.tsv"):
        res = runner.invoke(cli, ["unifrac", "--table", str(tmp_path / "t.biom"), "--tree", str(tmp_path / "t.nwk"),
                                  "--metric", "weighted_normalized", "--output", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
        assert "9 samples" in res.output
    with h5py.File(tmp_path / "dm.h5") as f:
        order = [s.decode() if isinstance(s, bytes) else s for s in f["order"][:]]
        assert order == ref.ids
        assert np.abs(f["matrix"][:] - ref.data).max() <= 1e-12
    df = pd.read_csv(tmp_path / "dm.tsv", sep="\t", index_col=0)
    assert list(df.index) == ref.ids and list(df.columns) == ref.ids
    assert np.abs(df.values - ref.data).max() <= 1e-12
    res = runner.invoke(cli, ["unifrac", "--table", str(tmp_path / "t.biom"), "--tree", str(tmp_path / "t.nwk"),
                              "--metric", "faith_pd", "--output", str(tmp_path / "pd.tsv")])
    assert res.exit_code == 0, res.output
    pdf = pd.read_csv(tmp_path / "pd.tsv", sep="\t", index_col=0)
    ref_pd = U.faith_pd(table, newick)
    assert list(pdf.index) == list(ref_pd.index)
    assert np.abs(pdf["faith_pd"].values - ref_pd.values).max() <= 1e-12
    res = runner.invoke(cli, ["unifrac", "--table", str(tmp_path / "t.biom"), "--tree", str(tmp_path / "t.nwk"),
                              "--metric", "faith_pd", "--output", str(tmp_path / "pd.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "pd.h5") as f:
        assert [s.decode() for s in f["order"][:]] == list(ref_pd.index)
        assert np.abs(f["faith_pd"][:] - ref_pd.values).max() <= 1e-12


def test_cli_error_is_one_line(tmp_path):
    from aam.cli.main import main

    (tmp_path / "t.nwk").write_text("((a,b),c);")
    table = random_table(3, 3, np.random.default_rng(0), feature_ids=["a", "b", "c"])
    with open(tmp_path / "t.biom", "w") as f:
        table.to_json("test", direct_io=f)
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["unifrac", "--table", str(tmp_path / "t.biom"), "--tree", str(tmp_path / "t.nwk"),
                   "--output", str(tmp_path / "o.h5")])
    assert rc == 2
    assert err.getvalue().count("\n") == 1 and "no branch lengths" in err.getvalue()


@pytest.mark.realdata
def test_ibd_matches_skbio(ibd_dir):
    import biom

    tree = read_tree(ibd_dir / "tree.nwk")
    newick = (ibd_dir / "tree.nwk").read_text()
    table = biom.load_table(str(ibd_dir / "table.biom"))
    tips = tree.tip_index()
    table = table.filter([f for f in table.ids("observation") if f in tips], axis="observation", inplace=False)
    table = table.filter(list(table.ids())[:60], inplace=False)
    table.remove_empty(axis="observation", inplace=True)
    sk = skbio_tree(newick)
    from skbio.diversity import alpha_diversity, beta_diversity

    x = table.matrix_data.T.toarray()
    taxa = list(table.ids("observation"))
    for metric, (name, kw) in SKBIO.items():
        ref = beta_diversity(name, x, list(table.ids()), taxa=taxa, tree=sk, **kw).data
        got = U.unifrac(table, tree, metric)
        assert np.abs(got.data - ref).max() <= 1e-9, metric
        got32 = U.unifrac(table, tree, metric, dtype="float32")
        assert np.abs(got32.data - ref).max() <= 1e-5, metric
        td = TreeDistances(table, tree, metric)
        assert np.abs(td.pairs(got.ids[:32]) - ref[:32, :32]).max() <= 1e-9
    ref_pd = alpha_diversity("faith_pd", x, list(table.ids()), taxa=taxa, tree=sk).values
    assert np.abs(U.faith_pd(table, tree).values - ref_pd).max() <= 1e-9


def test_skbio_treenode_and_text_inputs():
    from aam.ops.unifrac import from_skbio

    newick, table = case(12, root_length=0.4)
    ref = U.unifrac(table, parse_newick(newick), "unweighted").data
    assert np.abs(U.unifrac(table, from_skbio(skbio_tree(newick)), "unweighted").data - ref).max() <= 1e-12
    assert np.abs(U.unifrac(table, skbio_tree(newick), "unweighted").data - ref).max() <= 1e-12
    assert np.abs(U.unifrac(table, newick, "unweighted").data - ref).max() == 0


def test_batch_targets_parallel_path_and_progress():
    newick, table = case(13, n_tips=90, n_samples=80, n_features=80)
    calls = []
    full = U.unifrac(table, newick, "weighted_unnormalized", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 0
    td = TreeDistances(table, newick, "weighted_unnormalized", threads=2)
    ids = list(reversed(full.ids))[:70]  # > 64 samples: the multi-threaded path
    assert np.abs(td.pairs(ids) - full.pairs(ids)).max() <= 1e-9


def test_single_child_chain_root_length_and_zero_branch():
    """Chains of single-child nodes are merged into one branch; the result must not change."""
    import biom
    from skbio.diversity import alpha_diversity

    newick = "(((a:1,b:2)x:0.5,(c:1,d:0):0.25):0.7):0.3;"
    table = biom.Table(np.array([[1, 0, 3], [0, 2, 0], [4, 4, 0], [1, 0, 0]], float), list("abcd"), ["s1", "s2", "s3"])
    for metric in SKBIO:
        assert np.abs(U.unifrac(table, newick, metric).data - skbio_beta(table, newick, metric)).max() <= 1e-12
    ref = alpha_diversity("faith_pd", table.matrix_data.T.toarray(), list(table.ids()), taxa=list("abcd"),
                          tree=skbio_tree(newick)).values
    assert np.abs(U.faith_pd(table, newick).values - ref).max() <= 1e-12
