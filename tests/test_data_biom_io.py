"""BIOM loading (HDF5, JSON, .qza) and rarefaction; bad input gives one-line InputErrors."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import biom
import h5py
import numpy as np
import pytest

from aam.data.biom_io import load_table, rarefy
from aam.data.sequences import feature_sequences, load_sequences, read_qza_tree
from aam.errors import InputError

SEQS = ["ACGT", "GGCA", "TTAG"]


def _table() -> biom.Table:
    data = np.array([[10, 0, 3, 50], [5, 1, 0, 50], [0, 2, 9, 0]])
    return biom.Table(data, SEQS, ["S1", "S2", "S3", "S4"])


def _write_h5(table: biom.Table, path: Path) -> Path:
    with h5py.File(path, "w") as f:
        table.to_hdf5(f, "test")
    return path


def _same(a: biom.Table, b: biom.Table) -> None:
    assert list(a.ids()) == list(b.ids())
    assert list(a.ids(axis="observation")) == list(b.ids(axis="observation"))
    np.testing.assert_array_equal(a.matrix_data.toarray(), b.matrix_data.toarray())


def test_hdf5_json_and_qza_roundtrip(tmp_path: Path) -> None:
    t = _table()
    _same(load_table(_write_h5(t, tmp_path / "t.biom")), t)
    (tmp_path / "t.json").write_text(t.to_json("test"))
    _same(load_table(tmp_path / "t.json"), t)
    qza = tmp_path / "t.qza"
    with zipfile.ZipFile(qza, "w") as zf:
        zf.writestr("1234-uuid/metadata.yaml", "uuid: 1234\ntype: FeatureTable[Frequency]\n")
        zf.write(tmp_path / "t.biom", "1234-uuid/data/feature-table.biom")
    _same(load_table(qza), t)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.biom does not exist; check the --table path"):
        load_table(tmp_path / "nope.biom")


def test_not_biom(tmp_path: Path) -> None:
    p = tmp_path / "x.biom"
    p.write_text("sample\tcount\nS1\t3\n")
    with pytest.raises(InputError, match=r"x\.biom is not a BIOM 2\.x table.*biom convert") as exc:
        load_table(p)
    assert "\n" not in str(exc.value)
    q = tmp_path / "x.qza"
    q.write_text("not a zip")
    with pytest.raises(InputError, match="not a QIIME 2 artifact"):
        load_table(q)


def test_empty_table(tmp_path: Path) -> None:
    empty = biom.Table(np.zeros((2, 2)), ["AC", "GT"], ["S1", "S2"])
    with pytest.raises(InputError, match=r"e\.biom is empty.*pass a table with counts"):
        load_table(_write_h5(empty, tmp_path / "e.biom"))


def test_rarefy_seeded_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    t = _table()  # totals 15, 3, 12, 100
    with caplog.at_level(logging.WARNING, logger="aam.data"):
        r1, info = rarefy(t, 10, seed=3)
    assert "drops 1 of 4 samples" in caplog.text
    r2, _ = rarefy(t, 10, seed=3)
    _same(r1, r2)
    assert list(r1.ids()) == ["S1", "S3", "S4"]
    assert (np.asarray(r1.sum(axis="sample")) == 10).all()
    assert info.depth == 10 and info.seed == 3 and info.dropped_ids == ["S2"]
    assert info.n_input == 4 and info.n_kept == 3
    assert info.to_dict()["dropped_ids"] == ["S2"]


def test_rarefy_depth_above_every_sample() -> None:
    with pytest.raises(InputError, match=r"depth 500 is above every sample .*largest sample total 100.*--rarefy-depth 100"):
        rarefy(_table(), 500, seed=0)


def test_feature_ids_not_sequences() -> None:
    ids = ["4b5eeb300368260019c1fbc7a3c718fc", "fe30ff0f71a38a39cf1717ec2be3a2fc", "ACGT"]
    with pytest.raises(InputError, match=r"2 of 3 feature IDs of table t\.biom are not nucleotide sequences.*--sequences"):
        feature_sequences(ids, table_path="t.biom")
    assert feature_sequences(SEQS) == SEQS


def test_fasta_and_qza_mapping(tmp_path: Path) -> None:
    fa = tmp_path / "seqs.fasta"
    fa.write_text(">h1 desc\nACGT\nAC\n>h2\nggca\n")
    mapping = load_sequences(fa)
    assert mapping == {"h1": "ACGTAC", "h2": "ggca"}
    assert feature_sequences(["h2", "h1"], mapping) == ["ggca", "ACGTAC"]
    with pytest.raises(InputError, match=r"2 feature ID\(s\) of the table are not in .*seqs\.fasta: h3, h4"):
        feature_sequences(["h1", "h3", "h4"], mapping, mapping_path=fa)
    qza = tmp_path / "rep.qza"
    with zipfile.ZipFile(qza, "w") as zf:
        zf.write(fa, "abcd/data/dna-sequences.fasta")
        zf.writestr("abcd/data/tree.nwk", "(h1:0.1,h2:0.2);\n")
    assert load_sequences(qza) == mapping
    assert read_qza_tree(qza).strip() == "(h1:0.1,h2:0.2);"
    bad = tmp_path / "bad.fasta"
    bad.write_text("ACGT\n")
    with pytest.raises(InputError, match="not a FASTA"):
        load_sequences(bad)


def test_qza_tree_and_taxonomy_read_directly(tmp_path: Path) -> None:
    """QIIME 2's rooted-tree.qza and taxonomy.qza are read as they are (no `qiime tools export`)."""
    from aam.data.taxonomy import load_taxonomy
    from aam.ops.unifrac import load_tree

    tsv = "Feature ID\tTaxon\tConfidence\nh1\tk__Bacteria; g__A\t0.9\nh2\tk__Bacteria; g__B\t0.8\n"
    (tmp_path / "taxonomy.tsv").write_text(tsv)
    tree_qza, tax_qza = tmp_path / "rooted-tree.qza", tmp_path / "taxonomy.qza"
    with zipfile.ZipFile(tree_qza, "w") as zf:
        zf.writestr("u1/metadata.yaml", "uuid: u1\n")
        zf.writestr("u1/data/tree.nwk", "((h1:0.1,h2:0.2):0.05,h3:0.3);\n")
    with zipfile.ZipFile(tax_qza, "w") as zf:
        zf.writestr("u2/data/taxonomy.tsv", tsv)
    tree = load_tree(tree_qza)
    assert sorted(tree.tip_index()) == ["h1", "h2", "h3"] and tree.source == str(tree_qza)
    assert load_taxonomy(tax_qza) == load_taxonomy(tmp_path / "taxonomy.tsv") == {
        "h1": "k__Bacteria; g__A", "h2": "k__Bacteria; g__B"}
    with pytest.raises(InputError, match="holds no Newick tree"):
        load_tree(tax_qza)


def test_corrupt_hdf5(tmp_path: Path) -> None:
    p = tmp_path / "c.biom"
    with h5py.File(p, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    with pytest.raises(InputError, match=r"c\.biom is not a readable BIOM table"):
        load_table(p)


def test_table_sequences_with_hashed_ids(tmp_path: Path) -> None:
    from aam.data.sequences import table_sequences

    hashed = biom.Table(np.array([[1, 2], [3, 0]]), ["h1", "h2"], ["S1", "S2"])
    with pytest.raises(InputError, match=r"table h\.biom are not nucleotide sequences .*'h1', 'h2'.*--sequences"):
        table_sequences(hashed, table_path="h.biom")
    fa = tmp_path / "s.fa"
    fa.write_text(">h2\nGGG\n>h1\nACGT\n")
    assert table_sequences(hashed, fa) == ["ACGT", "GGG"]
