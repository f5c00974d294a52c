"""`aam export`: a fine-tuned model as an ONNX graph, checked against PyTorch in onnxruntime."""

from __future__ import annotations

import click

from aam.cli import options as O
from aam.workflows.requests import ExportRequest, default_of


@click.command(cls=O.GroupedCommand)
@O.opt("Data", "--model", required=True, type=click.Path(dir_okay=False),
       help="checkpoints/best.pt (or last.pt) of `aam train` (an ensemble exports as one graph).")
@O.opt("Output", "--format", type=click.Choice(["onnx"]), default=default_of(ExportRequest, "format"),
       help="Export format.")
@O.opt("Output", "--opset", type=click.IntRange(min=18), default=default_of(ExportRequest, "opset"),
       help="ONNX opset version.")
@O.opt("Output", "--output", required=True, type=click.Path(dir_okay=False),
       help="The .onnx file: inputs tokens, asv_index, offsets, counts, entry_sample, entry_pos, slots "
            "(+ asv_ids, categorical), output target; every axis dynamic (see aam.workflows.export).")
def export(**options) -> int:
    """Export the model's math path to ONNX with dynamic batch, ASV and read-length axes, then run the graph in
    onnxruntime on a batch of other sizes and check it against PyTorch by the kernel parity rule."""
    from aam.workflows.export import run_export

    res = run_export(ExportRequest.from_options(options))
    click.echo(f"wrote {res['output']} (inputs {', '.join(res['inputs'])}); onnxruntime vs PyTorch: max abs "
               f"error {res['max_abs_error']:.2e} (bound {res['bound']:.1e})")
    return 0
