"""The work behind `aam attention`: where a trained model's attention goes, per sample and per ASV.

Every transformer layer that works on a sample's ASVs (the sample encoder, the encoder and, in a fine-tuned
model, the target encoder; not the auxiliary count head) is run on the math path with its weights recorded.
An ASV's attention in a layer is the attention it receives: the mean over heads and over the sample's ASVs (as
queries) of their weight on it, so over a sample's ASVs it sums to 1 in every layer; `attention` is the mean
over layers (and over the members of an ensemble). Padded slots are never written. `--asv` adds the
nucleotide-level map of chosen ASVs from the ASV encoder's layers, in the same way.

Because a sample's attention sums to 1, an ASV of a sample with few ASVs gets more of it; `relative` = attention
x the sample's number of ASVs (1 = an even share) compares across samples, and the heatmap shows it.

Writes into --output (a folder): attention.tsv (sample_id, feature_id, taxon, count, attention, relative,
attention_<layer>...), top_asvs.png (the ASVs with the highest mean relative attention x samples, grouped by
--metadata-column), and with --asv nucleotides.tsv / nucleotides.png.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam.data import metadata as meta
from aam.data.dataset import collate
from aam.data.prepare import make_dataset
from aam.data.taxonomy import load_taxonomy, short_label
from aam.errors import InputError
from aam.models.transformer import record_attention
from aam.training import plots
from aam.utils.io import write_tsv
from aam.workflows.inference import (
    asv_embeddings,
    categorical_codes,
    load_model,
    model_inputs,
    prepare,
    report_skipped,
)
from aam.workflows.requests import AttentionRequest

log = logging.getLogger("aam")
BASES = {1: "A", 2: "C", 3: "G", 4: "T", 5: "^", 6: "N"}


def layer_name(module_name: str) -> str | None:
    """'members.0.base_model.encoder.blocks.1.attn' -> 'encoder.1'; None for the layers not reported (the ASV
    encoder's, the count head's)."""
    name = re.sub(r"^members\.\d+\.", "", module_name).replace("base_model.", "")
    if "asv_encoder" in name or name.startswith("count_encoder"):
        return None
    return name.replace(".transformer.blocks.", ".").replace(".blocks.", ".").removesuffix(".attn")


def received(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N, H, L, L] weights, valid [N, L] -> [N, L]: the mean over heads and valid queries of the weight each
    key receives (0 at padding; sums to 1 over the valid keys of every row that has any)."""
    per_query = weights.mean(dim=1)  # [N, L(query), L(key)]
    q = valid.to(per_query.dtype)
    return (per_query * q[:, :, None]).sum(dim=1) / q.sum(dim=1, keepdim=True).clamp_min(1)


def _layers(records: dict[str, list[torch.Tensor]], valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per reported layer, the attention each slot receives [B, S], averaged over ensemble members."""
    by_layer: dict[str, list[torch.Tensor]] = {}
    for module, calls in records.items():
        name = layer_name(module)
        if name is not None and calls:
            by_layer.setdefault(name, []).append(received(calls[-1].float(), valid))
    return {name: torch.stack(v).mean(0) for name, v in by_layer.items()}


def _nucleotide_maps(model: torch.nn.Module, prepared: Any, wanted: tuple[str, ...], device: torch.device
                     ) -> tuple[list[str], list[list[str]], dict[str, np.ndarray], dict[str, str]]:
    """nucleotides.tsv (header, rows) and each chosen ASV's mean attention and bases per position after the
    START token; a feature is named by its ID or its sequence."""
    ids = [str(f) for f in prepared.table.ids(axis="observation")]
    index = {f: i for i, f in enumerate(ids)}
    seq_index = {s: i for i, s in enumerate(prepared.sequences)}
    rows, maps, bases = [], {}, {}
    encoders = [m.asv_encoder for m in getattr(model, "members", [model])]
    for fid in wanted:
        i = index[fid] if fid in index else seq_index[fid]  # checked in run_attention
        tokens = torch.as_tensor(prepared.tokens[i][None].astype(np.int64), device=device)
        tokens = tokens[:, : int((tokens != 0).sum())]
        valid = tokens != 0
        per_layer: dict[str, list[torch.Tensor]] = {}  # layer -> one map per ensemble member
        for enc in encoders:
            with torch.no_grad(), record_attention(enc) as records:
                enc(tokens, with_logits=False)
            for name, calls in records.items():
                per_layer.setdefault(name, []).append(received(calls[-1].float(), valid)[0])
        layers = [torch.stack(v).mean(0).cpu().numpy() for v in per_layer.values()]
        mean = np.mean(layers, axis=0)
        letters = [BASES.get(int(t), "?") for t in tokens[0].tolist()]
        maps[fid], bases[fid] = mean[1:], "".join(letters[1:])
        for pos in range(1, len(letters)):  # position 0 is the START token
            rows.append([fid, str(pos), letters[pos], f"{mean[pos]:.6g}", *[f"{v[pos]:.6g}" for v in layers]])
    header = ["feature_id", "position", "base", "attention",
              *[f"attention_layer{k}" for k in range(len(encoders[0].transformer.blocks))]]
    return header, rows, maps, bases


def run_attention(req: AttentionRequest) -> dict[str, Any]:
    out_dir = Path(req.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--output {out_dir} is a file; aam attention writes a folder")
    _, mcfg, pre, model, device = load_model(req.source, req.run, None)
    prepared = prepare(req.source, mcfg, pre)
    ids = [str(s) for s in prepared.table.ids(axis="sample")]
    if not ids:
        raise InputError(f"{req.source.table}: no sample left after preprocessing (see the log)")
    known = {str(f) for f in prepared.table.ids(axis="observation")} | set(prepared.sequences)
    missing = [a for a in req.asvs if a not in known]
    if missing:
        raise InputError(f"--asv {missing[0]}: no such feature ID (or sequence) in {req.source.table}; name one "
                         "of its ASVs")
    md, cat = categorical_codes(req.source, pre, ids)
    if req.metadata_column:
        meta.require_columns(md, [req.metadata_column], req.source.metadata)
    taxonomy = load_taxonomy(req.taxonomy) if req.taxonomy else {}
    dataset = make_dataset(prepared, ids, pre, None, cat)
    cache = asv_embeddings(model, prepared, device)  # the ASV encoder's layers are not reported here
    from tqdm.auto import tqdm

    rows: list[list[str]] = []
    names: list[str] = []
    per_sample: dict[str, dict[str, float]] = {}
    for lo in tqdm(range(0, len(dataset), req.run.batch_size), desc="attention", unit="batch", leave=False,
                   disable=os.environ.get("AAM_NO_PROGRESS") is not None):
        items = [dataset[i] for i in range(lo, min(lo + req.run.batch_size, len(dataset)))]
        inputs = model_inputs(collate(items), device, cache)
        with torch.no_grad(), record_attention(model) as records:
            out = model(**inputs)
        layers = _layers(records, out["valid"])
        names = names or list(layers)
        mean = torch.stack([layers[n] for n in names]).mean(0).cpu().numpy()
        per_layer = {n: layers[n].cpu().numpy() for n in names}
        for b, item in enumerate(items):
            fids = [dataset.feature_ids[int(f)] for f in item["features"]]
            per_sample[item["sample_id"]] = {}
            for s, fid in enumerate(fids):  # the sample's valid slots only, in slot order
                relative = float(mean[b, s]) * len(fids)
                per_sample[item["sample_id"]][fid] = relative
                rows.append([item["sample_id"], fid, taxonomy.get(fid, ""), f"{item['counts'][s]:.6g}",
                             f"{mean[b, s]:.6g}", f"{relative:.6g}", *[f"{per_layer[n][b, s]:.6g}" for n in names]])
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "attention.tsv"
    write_tsv(table_path, ["sample_id", "feature_id", "taxon", "count", "attention", "relative",
                           *[f"attention_{n}" for n in names]], rows)
    report_skipped(prepared, table_path, "attended")
    heatmap = _heatmap(per_sample, md, req, taxonomy, out_dir / "top_asvs.png")
    result = {"output": str(out_dir), "table": str(table_path), "plot": str(heatmap), "layers": names,
              "n_samples": len(per_sample)}
    if req.asvs:
        header, nuc_rows, maps, bases = _nucleotide_maps(model, prepared, req.asvs, device)
        write_tsv(out_dir / "nucleotides.tsv", header, nuc_rows)
        result["nucleotides"] = str(plots.nucleotide_attention(maps, bases, out_dir / "nucleotides.png"))
    log.info("attention of %d samples over %d layers (%s) written to %s", len(per_sample), len(names),
             ", ".join(names), out_dir)
    return result


def _heatmap(per_sample: dict[str, dict[str, float]], md: Any, req: AttentionRequest, taxonomy: dict[str, str],
             path: Path) -> Path:
    """Relative attention of the --top ASVs with the highest mean (over samples, absent = 0) x samples, grouped
    by --metadata-column."""
    samples = list(per_sample)
    groups = None
    if req.metadata_column:
        values = meta.group_labels(md, req.metadata_column, samples)
        order = np.argsort(values, kind="stable")
        samples, groups = [samples[i] for i in order], [values[i] for i in order]
    features = sorted({f for v in per_sample.values() for f in v})
    totals = {f: sum(per_sample[s].get(f, 0.0) for s in samples) / len(samples) for f in features}
    top = sorted(features, key=lambda f: -totals[f])[: req.top]
    grid = np.array([[per_sample[s].get(f, np.nan) for s in samples] for f in top])
    labels = [short_label(f, taxonomy.get(f)) for f in top]
    return plots.attention_heatmap(grid, labels, samples, groups, path,
                                   f"relative attention (1 = an even share; mean over layers), top {len(top)} ASVs")
