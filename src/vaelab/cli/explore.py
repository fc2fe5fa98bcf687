"""The `explore` command: a run's latent space in the browser (vaelab.explore)."""

from __future__ import annotations

import click

from vaelab.cli.options import (
    RegistryChoice,
    _echo,
    device_option,
    run_data_dir_option,
    split_option,
)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--port", type=int, default=8765, show_default=True, help="Port to serve on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 makes the explorer reachable from other machines (no login).")
@split_option
@click.option("--n", type=int, default=5000, show_default=True, help="Images of the split on the map.")
@click.option("--projection", type=RegistryChoice("vaelab.explore.projection:PROJECTIONS"), default="pca", show_default=True,
              help="How codes of more than 2 dimensions are drawn (umap needs umap-learn).")
@click.option("--no-browser", is_flag=True, help="Only print the address; do not open a browser.")
@run_data_dir_option
@device_option
def explore(run_dir, port, host, split, n, projection, no_browser, data_dir, device) -> None:
    """Explore a run's latent space in the browser: map, sliders, interpolation, samples, uploads."""
    from vaelab.explore.server import explore as serve

    serve(run_dir, host=host, port=port, split=split, n=n, projection=projection, browser=not no_browser,
          device=device, data_dir=data_dir, log=_echo, warn=lambda m: click.echo(m, err=True))
