"""Feature IDs as ASV sequences: validation, and FASTA / QIIME 2 .qza mappings from hashed IDs."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from aam.data.biom_io import _qza_member
from aam.errors import InputError

_SEQ_RE = re.compile(r"^[ACGTUNRYSWKMBDHVacgtunryswkmbdhv]+$")
N_LIST = 10


def is_sequence(feature_id: str) -> bool:
    """True when the ID is made only of nucleotide letters (ACGTU + IUPAC ambiguity codes)."""
    return bool(_SEQ_RE.match(feature_id))


def _parse_fasta(text: str, path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    name: str | None = None
    chunks: list[str] = []
    for line_no, line in enumerate(io.StringIO(text), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if name is not None:
                out[name] = "".join(chunks)
            name = line[1:].split()[0] if line[1:].strip() else ""
            if not name:
                raise InputError(f"FASTA {path} line {line_no} has a record without a name; give every record an ID")
            if name in out:
                raise InputError(f"FASTA {path} has the ID {name!r} twice; keep one record per feature")
            chunks = []
        elif name is None:
            raise InputError(f"{path} is not a FASTA file (line {line_no} comes before any '>' header)")
        else:
            chunks.append(line)
    if name is not None:
        out[name] = "".join(chunks)
    if not out:
        raise InputError(f"FASTA {path} has no records; pass a FASTA of feature sequences")
    return out


def load_sequences(path: str | Path) -> dict[str, str]:
    """Feature ID -> sequence from a FASTA file or a QIIME 2 FeatureData[Sequence] .qza."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sequence file {path} does not exist; check the --sequences path")
    if path.suffix.lower() == ".qza":
        data = _qza_member(path, ("dna-sequences.fasta", ".fasta", ".fna", ".fa"), "FASTA of sequences")
    else:
        data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a text FASTA file; pass a FASTA or a QIIME 2 sequences .qza") from exc
    return _parse_fasta(text, path)


def read_qza_tree(path: str | Path) -> str:
    """Newick text of `*/data/tree.nwk` inside a QIIME 2 Phylogeny .qza."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"tree file {path} does not exist; check the --tree path")
    return _qza_member(path, ("tree.nwk", ".nwk"), "Newick tree").decode("utf-8")


def feature_sequences(
    feature_ids: Sequence[str],
    mapping: Mapping[str, str] | None = None,
    table_path: str | Path | None = None,
    mapping_path: str | Path | None = None,
) -> list[str]:
    """The sequence of each feature: the ID itself, or mapping[ID] when a mapping is given."""
    where = f"table {table_path}" if table_path else "the table"
    ids = [str(f) for f in feature_ids]
    if mapping is None:
        bad = [f for f in ids if not is_sequence(f)]
        if bad:
            shown = ", ".join(repr(f) for f in bad[:3])
            raise InputError(
                f"{len(bad)} of {len(ids)} feature IDs of {where} are not nucleotide sequences (e.g. {shown}); "
                "pass --sequences with a FASTA or QIIME 2 .qza that maps these IDs to their sequences"
            )
        return ids
    src = mapping_path or "the sequence mapping"
    missing = [f for f in ids if f not in mapping]
    if missing:
        raise InputError(
            f"{len(missing)} feature ID(s) of {where} are not in {src}: {', '.join(missing[:N_LIST])}"
            f"{' ...' if len(missing) > N_LIST else ''}; use the sequences file made with this table"
        )
    seqs = [mapping[f] for f in ids]
    bad = [f for f, s in zip(ids, seqs, strict=True) if not is_sequence(s)]
    if bad:
        raise InputError(
            f"{src} has non-nucleotide sequences for {len(bad)} feature(s) (e.g. {bad[0]!r}); "
            "remove gaps and other symbols from the sequences"
        )
    return seqs


def table_sequences(
    table: object, sequences_path: str | Path | None = None, table_path: str | Path | None = None
) -> list[str]:
    """Sequences of a biom.Table's features, in table order: the IDs themselves, or mapped through
    the FASTA/.qza at `sequences_path` (the --sequences option)."""
    ids = [str(f) for f in table.ids(axis="observation")]  # type: ignore[attr-defined]
    mapping = load_sequences(sequences_path) if sequences_path is not None else None
    return feature_sequences(ids, mapping, table_path=table_path, mapping_path=sequences_path)
