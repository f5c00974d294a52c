"""Feature taxonomy (a QIIME 2 taxonomy TSV: `Feature ID`, `Taxon`[, `Confidence`]) and short labels for plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from aam.errors import InputError


def load_taxonomy(path: str | Path) -> dict[str, str]:
    """Feature ID -> taxon string from a QIIME 2 taxonomy TSV or FeatureData[Taxonomy] .qza. The header must
    name the ID column (`Feature ID`, `feature-id` or `id`) and `Taxon`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"taxonomy file not found: {path}")
    try:
        if path.suffix.lower() == ".qza":
            from aam.data.biom_io import _qza_member

            text = _qza_member(path, ("taxonomy.tsv", ".tsv"), "taxonomy TSV").decode("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"taxonomy file {path} is not text (UTF-8); give the QIIME 2 taxonomy TSV or "
                         "taxonomy.qza") from None
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
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
