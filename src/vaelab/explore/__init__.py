"""Explore a run's latent space in the browser (``vaelab explore RUN``).

    from vaelab.explore import explore, make_app, BackgroundServer
    explore("runs/mlp-vae")                         # serve until Ctrl+C, as the command does
    app = make_app(vaelab.Run.load("runs/mlp-vae")) # the Starlette app, to serve as you like
    with BackgroundServer(app) as server:           # or from a thread (a notebook)
        print(server.url)

Layout: ``explorer`` (the run in memory and its answers), ``projection`` (the map and its
way back to codes), ``images`` (PNG out, uploads in), ``checks`` (what a request may
hold), ``app`` (routes), ``server`` (port, uvicorn, browser); the page is ``static/``.
"""

from __future__ import annotations


def __getattr__(name: str):
    # Light on import, like the rest of vaelab: torch and starlette load on first use.
    if name in ("explore", "BackgroundServer"):
        from vaelab.explore import server

        return getattr(server, name)
    if name == "make_app":
        from vaelab.explore.app import make_app

        return make_app
    if name == "Explorer":
        from vaelab.explore.explorer import Explorer

        return Explorer
    raise AttributeError(f"module 'vaelab.explore' has no attribute {name!r}")


__all__ = ["BackgroundServer", "Explorer", "explore", "make_app"]
