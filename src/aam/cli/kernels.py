"""`aam kernels`: which kernel backends exist on this machine, why the others do not, and a self-check."""

from __future__ import annotations

import click


@click.command("kernels")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the whole report (versions, modules, backends, checks) as JSON, for bug reports.")
@click.option("--device", type=click.Choice(["all", "cpu", "cuda"]), default="all", show_default=True,
              help="Which devices to report.")
@click.option("--no-check", is_flag=True, help="Only report availability; skip the self-checks.")
def kernels(json_path: str | None, device: str, no_check: bool) -> int:
    """Show kernel backends per op on this machine and self-check each available one.

    Exits 1 when a backend that claims to be available fails its self-check.
    """
    import torch

    from aam.errors import AAMError
    from aam.ops import diagnostics

    if device == "cuda" and not torch.cuda.is_available():
        raise AAMError("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); use --device cpu")
    devs = diagnostics.devices() if device == "all" else [torch.device(device)]
    rep = diagnostics.report(devs, check=not no_check)
    click.echo(diagnostics.format_report(rep))
    if json_path:
        diagnostics.write_json(rep, json_path)
        click.echo(f"report written to {json_path}")
    if rep["failed"]:
        click.get_current_context().exit(1)
    return 0
