"""The pairwise UniFrac targets of a run: which source (`--unifrac-matrix` or `--tree`), checked, resolved and
loaded; a resumed run reuses the source its checkpoint recorded."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from aam.data import distances as dist
from aam.data.prepare import PreparedTable, Preprocessing, make_dataset
from aam.data.streaming import StreamedTable, visible_chunks
from aam.errors import AAMError, InputError
from aam.ops.unifrac import TreeDistances
from aam.ops.unifrac.tree_distances import Chunks
from aam.workflows.requests import DistanceOptions

log = logging.getLogger("aam")


def from_resume(opts: DistanceOptions, resume: dict[str, Any] | None) -> DistanceOptions:
    """A resumed run without --tree / --unifrac-matrix reuses the distance source its checkpoint recorded."""
    if resume is None or opts.given:
        return opts
    source = resume["preprocessing"].get("extra", {}).get("unifrac")
    if not source:
        return opts
    if source["source"] == "tree":
        return dataclasses.replace(opts, tree=source["tree"], unifrac_metric=source["metric"],
                                   unifrac_alpha=source.get("alpha"),
                                   drop_missing_features=source.get("drop_missing_features", False),
                                   unifrac_targets=source.get("targets", "all"))
    return dataclasses.replace(opts, unifrac_matrix=source["matrix"], unifrac_ids=source.get("ids"))


def resolve(opts: DistanceOptions, asv_sampling: str, required: bool) -> DistanceOptions:
    """Exactly one of --unifrac-matrix / --tree (or neither when not `required`), with the --tree defaults
    filled in: --unifrac-metric unweighted, --unifrac-targets visible (all with --asv-sampling random)."""
    matrix, tree = opts.unifrac_matrix, opts.tree
    if matrix and tree:
        raise AAMError(f"--unifrac-matrix {matrix} and --tree {tree} are both given; pass one distance source "
                       "(a precomputed matrix, or a tree for UniFrac computed per batch)")
    if required and not matrix and not tree:
        raise AAMError("pass --unifrac-matrix (precomputed distances; `aam unifrac` makes one) or --tree "
                       "(UniFrac computed per batch from a Newick tree)")
    if not tree:
        if opts.unifrac_alpha is not None or opts.drop_missing_features or opts.unifrac_targets is not None:
            raise AAMError("--unifrac-alpha, --unifrac-targets and --drop-missing-features apply only with --tree")
        if opts.unifrac_metric is not None:
            raise AAMError(f"--unifrac-metric {opts.unifrac_metric} applies only with --tree; a --unifrac-matrix "
                           "already holds one metric (`aam unifrac --metric` chooses it when making the matrix)")
        return opts
    targets = opts.unifrac_targets or ("all" if asv_sampling == "random" else "visible")
    if targets == "visible" and asv_sampling == "random":
        raise AAMError("--unifrac-targets visible needs --asv-sampling abundance or first: with 'random' the "
                       "visible ASVs change every epoch")
    metric = opts.unifrac_metric or "unweighted"
    if not Path(tree).is_file():
        raise InputError(f"--tree {tree}: file not found; pass a Newick tree whose tips are the table's features")
    if opts.unifrac_alpha is not None and metric != "generalized":
        raise AAMError(f"--unifrac-alpha applies only to --unifrac-metric generalized, not {metric}")
    return dataclasses.replace(opts, unifrac_targets=targets, unifrac_metric=metric)


def load(opts: DistanceOptions, table_path: str, num_workers: int, sample_ids: list[str],
         prepared: PreparedTable | StreamedTable, pre: Preprocessing) -> Any:
    """The batch-target source of resolved `opts`: a precomputed matrix, or TreeDistances over the rarefied
    table (--tree). With --tree the per-sample state is built once here and the collate function (DataLoader
    workers) computes each batch's [B, B] block; workers get threads=1. A streamed table is read for it in
    chunks. The source is recorded in `pre.extra`.
    """
    if opts.tree:
        visible = opts.unifrac_targets == "visible"
        if isinstance(prepared, StreamedTable):
            table: Any = Chunks(visible_chunks(prepared, pre, visible))
        else:
            table = make_dataset(prepared, sample_ids, pre).visible_table() if visible else prepared.table
        try:
            dm = TreeDistances(table, opts.tree, opts.unifrac_metric, opts.unifrac_alpha,
                               threads=1 if num_workers > 0 else None,
                               drop_missing_features=opts.drop_missing_features)
        except InputError as exc:  # name the table file rather than "table"
            msg = str(exc)
            raise InputError(f"{table_path}{msg[len('table'):]}" if msg.startswith("table:") else msg) from None
        log.info("UniFrac targets (%s%s, %s) computed per batch from %s: %d samples, %.1f MiB of per-sample state%s",
                 dm.metric, f", alpha {dm.alpha}" if dm.metric == "generalized" else "",
                 f"the {pre.token_limit} visible ASVs per sample" if visible else "all ASVs", opts.tree, len(dm),
                 dm.nbytes / 2**20, f", {dm.n_dropped} features not in the tree ignored" if dm.n_dropped else "")
        source = {"source": "tree", "tree": str(Path(opts.tree).resolve()), "metric": dm.metric,
                  "alpha": dm.alpha if dm.metric == "generalized" else None,
                  "drop_missing_features": bool(opts.drop_missing_features),
                  "targets": "visible" if visible else "all"}
    else:
        dm = dist.load_distance_matrix(opts.unifrac_matrix, opts.unifrac_ids)
        dist.check_covers(dm, sample_ids, opts.unifrac_matrix)
        source = {"source": "matrix", "matrix": str(Path(opts.unifrac_matrix).resolve()),
                  "ids": str(Path(opts.unifrac_ids).resolve()) if opts.unifrac_ids else None}
    pre.extra["unifrac"] = source
    return dm
