"""Feature taxonomy (a QIIME 2 taxonomy TSV: `Feature ID`, `Taxon`[, `Confidence`]) and short labels for plots."""

from __future__ import annotations

import csv
from pathlib import Path

from aam.errors import InputError


def load_taxonomy(path: str | Path) -> dict[str, str]:
    """Feature ID -> taxon string. The header must name the ID column (`Feature ID`, `feature-id` or `id`)
    and `Taxon`; a `.qza` must be exported first."""
    path = Path(path)
    if path.suffix == ".qza":
        raise InputError(f"{path}: export the taxonomy first (qiime tools export --input-path {path.name} "
                         "--output-path tax) and pass tax/taxonomy.tsv")
    if not path.is_file():
        raise InputError(f"taxonomy file not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        raise InputError(f"taxonomy file {path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((k for k, h in enumerate(header) if h in ("feature id", "feature-id", "featureid", "id")), None)
    taxon_col = next((k for k, h in enumerate(header) if h == "taxon"), None)
    if id_col is None or taxon_col is None:
        raise InputError(f"taxonomy file {path}: header {rows[0][:3]} lacks 'Feature ID' and 'Taxon' columns "
                         "(the QIIME 2 taxonomy TSV layout)")
    return {r[id_col].strip(): r[taxon_col].strip() for r in rows[1:]
            if len(r) > max(id_col, taxon_col) and not r[id_col].startswith("#")}


def short_label(feature_id: str, taxon: str | None = None) -> str:
    """A plot label: the two deepest named ranks of the taxon (e.g. 'f__Bacteroidaceae; g__Bacteroides'),
    else the feature ID shortened to 12 characters."""
    if taxon:
        ranks = [r.strip() for r in taxon.split(";") if r.strip() and not r.strip().endswith("__")]
        if ranks:
            return "; ".join(ranks[-2:])
    return feature_id if len(feature_id) <= 12 else feature_id[:12] + "..."
