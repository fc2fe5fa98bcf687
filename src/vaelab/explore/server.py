"""Serving the explorer: the port, uvicorn, the browser, and a server in a thread.

``explore(run_dir, ...)`` is ``vaelab explore``: it takes the port first (a port in use
is one line, before anything is loaded), loads the run, builds the app, prints the URL,
opens a browser where there is a display, and serves until Ctrl+C.
``BackgroundServer(app)`` serves in a thread (a notebook, the tests, the benchmark).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable

from vaelab.errors import VaelabError

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or one clear line why not."""
    if not 0 <= port <= 65535:
        raise VaelabError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise VaelabError(f"--host {host} is not an address or a name this machine can resolve") from None
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that do, and with it on every response waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    # Lets a restart reuse a port whose last connections are closing; a port that another
    # server is listening on still fails to bind (Linux and macOS alike).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)  # from now on a browser's connection waits in the queue instead of being refused
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise VaelabError(f"port {port} is in use; choose another with --port") from None
        if e.errno == errno.EACCES:
            raise VaelabError(f"port {port} needs privileges here; choose one above 1023 with --port") from None
        raise VaelabError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") from None
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host in ("::", "::1") else host
    return f"http://{shown}:{port}/"


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers to answer: on loopback only the loopback names (a page on another
    site that resolves its own name to 127.0.0.1 gets nothing); elsewhere any."""
    return list(LOOPBACK_NAMES) if host in LOOPBACK_NAMES else None


def open_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser, if there is one; False when there is none."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    # A console browser (lynx, w3m) would take over the terminal the server prints to.
    if isinstance(browser, webbrowser.GenericBrowser) and not isinstance(browser, webbrowser.BackgroundBrowser):
        return False
    try:
        return bool(browser.open(url))
    except (webbrowser.Error, OSError):
        return False


def _uvicorn_server(app):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))


def explore(run_dir, host: str = "127.0.0.1", port: int = 8765, split: str | None = None, n: int = 5000,
            projection: str = "pca", browser: bool = True, device: str = "auto", data_dir: str | None = None,
            log: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:
    """Serve the explorer of the run in ``run_dir`` until interrupted (``vaelab explore``)."""
    from vaelab.api import Run
    from vaelab.explore.app import make_app
    from vaelab.explore.projection import check_projection

    check_projection(projection)
    if n < 1:
        raise VaelabError(f"--n must be at least 1, got {n}")
    sock = bind(host, port)
    try:
        if host not in LOOPBACK_NAMES and host != "::1":
            warn(f"vaelab: warning: serving on {host}: anyone who can reach this machine on port "
                 f"{sock.getsockname()[1]} can use the explorer (there is no login)")
        t0 = time.perf_counter()
        run = Run.load(run_dir, device=device, data_dir=data_dir)
        if projection != "pca" and run.config.model.latent_dim > 2:
            log(f"projecting up to {n} codes with {projection}: this can take minutes (a smaller --n is quicker)")
        app = make_app(run, split=split, n=n, projection=projection, seed=run.config.train.seed,
                       allowed_hosts=allowed_hosts(host))
        ex = app.state.explorer
        url = url_of(sock, host)
        log(f"exploring {run_dir}: {len(ex.x)} {ex.split} images, "
            f"{'map by ' + ex.projection.name if ex.continuous else 'no continuous latent'} "
            f"(ready in {time.perf_counter() - t0:.1f} s)")
        log(f"open {url}  (Ctrl+C to stop)")
        if browser and not open_browser(url):
            log("no graphical browser found here: open the address above yourself")
        try:
            _uvicorn_server(app).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down cleanly, then passes Ctrl+C on
            pass
        log("stopped")
    finally:
        sock.close()


class BackgroundServer:
    """Serve ``app`` from a thread: ``with BackgroundServer(app) as s: ... s.url ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock, host)
        self.server = _uvicorn_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
