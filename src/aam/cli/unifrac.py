"""`aam unifrac`: UniFrac distances (or Faith's PD) from a BIOM table and a Newick tree."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

METRIC_CHOICES = ("unweighted", "weighted_normalized", "weighted_unnormalized", "generalized", "faith_pd")


def write_matrix(path: Path, ids: list[str], data: np.ndarray) -> None:
    """ssu-style HDF5 (`matrix` + `order`) for .h5/.hdf5; scikit-bio TSV (blank corner) for .tsv/.txt."""
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".tsv", ".txt"):
        from aam.errors import AAMError

        raise AAMError(f"--output {path}: use a .h5/.hdf5 (ssu-style HDF5) or .tsv (scikit-bio) file name")
    from aam.utils.io import atomic_path

    with atomic_path(path) as tmp:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("matrix", data=data)
                f.create_dataset("order", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        else:
            with open(tmp, "w") as f:
                f.write("\t" + "\t".join(ids) + "\n")
                fmt = "%.17g" if data.dtype == np.float64 else "%.9g"
                for sid, row in zip(ids, data, strict=True):
                    f.write(sid + "\t" + "\t".join(fmt % x for x in row) + "\n")


def write_faith_pd(path: Path, ids: list[str], values: np.ndarray) -> None:
    """`faith_pd` + `order` datasets for .h5/.hdf5, else a TSV with columns sample_id, faith_pd."""
    from aam.utils.io import atomic_path

    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("faith_pd", data=np.asarray(values, dtype=np.float64))
                f.create_dataset("order", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            return
        with open(tmp, "w") as f:
            f.write("sample_id\tfaith_pd\n")
            for sid, v in zip(ids, values, strict=True):
                f.write(f"{sid}\t{v:.17g}\n")


@click.command("unifrac")
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False), help="BIOM table.")
@click.option("--tree", "tree_path", required=True, type=click.Path(dir_okay=False),
              help="Newick tree with branch lengths (or QIIME 2 rooted-tree.qza).")
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default="unweighted", show_default=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help=".h5/.hdf5 (matrix + order) or .tsv; faith_pd: .h5 (faith_pd + order) or a two-column TSV.")
@click.option("--alpha", type=float, default=None, help="Generalized UniFrac alpha in [0, 1] (default 0.5).")
@click.option("--threads", type=int, default=None, help="OpenMP threads (default: all cores).")
@click.option("--dtype", type=click.Choice(("float64", "float32")), default="float64", show_default=True)
@click.option("--drop-missing-features", is_flag=True, help="Drop table features that are not tips of the tree.")
def unifrac(table_path: str, tree_path: str, metric: str, output: str, alpha: float | None, threads: int | None,
            dtype: str, drop_missing_features: bool) -> None:
    """Compute UniFrac distances (or Faith's PD) natively, with no external tool."""
    from tqdm import tqdm

    from aam.ops.unifrac import check_metric, custom, read_tree, reference, tips_table, unifrac_dtype

    start = time.perf_counter()
    a = check_metric(metric, alpha)
    np_dtype = unifrac_dtype(dtype)
    tree = read_tree(tree_path)
    from aam.data.biom_io import load_table

    # BIOM (HDF5 or JSON) or a QIIME 2 FeatureTable .qza, read as every other command reads it
    table = tips_table(load_table(table_path), tree, drop_missing_features, source=table_path)
    # the registry's choice for UniFrac on the CPU (custom > math), made without importing torch
    reason = custom.engine_unavailable()
    engine = custom.unifrac_custom if reason is None else reference.unifrac_math
    if reason is not None:
        click.echo(f"unifrac: the C++ engine cannot run ({reason}); using the numpy reference (slow)", err=True)
    out = Path(output)
    if metric == "faith_pd":
        values = engine(tree, table, metric, a, threads, np_dtype, None)
        write_faith_pd(out, table.sample_ids, values)
    else:
        with tqdm(total=1, unit="node", desc=f"{metric} UniFrac", leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            data = engine(tree, table, metric, a, threads, np_dtype, progress)
        write_matrix(out, table.sample_ids, data)
    dropped = f", {table.n_dropped} features dropped" if table.n_dropped else ""
    click.echo(f"{metric}: {table.n_samples} samples, {len(table.feature_ids)} features{dropped}, "
               f"{time.perf_counter() - start:.2f} s -> {out}")
