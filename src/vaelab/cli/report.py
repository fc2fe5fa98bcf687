"""The `report` command: one self-contained HTML page about a run or a sweep."""

from __future__ import annotations

import click

from vaelab.cli.options import _echo


@click.command()
@click.argument("folder", metavar="RUN_OR_SWEEP_DIR", type=click.Path())
@click.option("--out", type=click.Path(), help="HTML file to write (default DIR/report.html).")
@click.option("--no-generate", is_flag=True,
              help="Do not draw missing figures (reconstructions, samples, a latent picture) first.")
@click.option("--data-dir", help="Where the data set lives, for drawing missing figures.")
def report(folder, out, no_generate, data_dir) -> None:
    """Write report.html: config, metrics, loss curves and every figure, images embedded."""
    from vaelab.errors import VaelabError
    from vaelab.report import write_report

    if no_generate and data_dir is not None:
        raise VaelabError("--data-dir is read to draw missing figures, and --no-generate draws none; give one of them")
    path = write_report(folder, out, generate=not no_generate, data_dir=data_dir, log=_echo)
    _echo(f"wrote {path}")
