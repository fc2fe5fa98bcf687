"""`vaelab explore`: one-line refusals before anything is served, the warning for a public
address, the browser only when asked, and a real server started by the command."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import cli_error, run_main, subprocess_env

pytest.importorskip("uvicorn")


@pytest.fixture
def no_serving(monkeypatch):
    """Replace uvicorn's serving loop: record what would be served, return at once."""
    from vaelab.explore import server

    served = []

    class Fake:
        def __init__(self, app):
            self.app = app

        def run(self, sockets):
            served.append((self.app, sockets[0].getsockname()))

    monkeypatch.setattr(server, "_uvicorn_server", Fake)
    opened = []
    monkeypatch.setattr(server, "open_browser", lambda url: opened.append(url) or True)
    return served, opened


def test_a_port_in_use_is_one_line_before_the_run_is_loaded(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        # the run does not even exist: the port is checked first
        line = cli_error(capsys, "explore", tmp_path / "no-run", "--port", port, "--no-browser")
    assert line == f"vaelab: error: port {port} is in use; choose another with --port"


def test_bad_arguments_are_one_line(capsys, monkeypatch, trained_run, tmp_path):
    assert "does not exist" in cli_error(capsys, "explore", tmp_path / "nope", "--port", 0, "--no-browser")
    monkeypatch.setitem(sys.modules, "umap", None)
    line = cli_error(capsys, "explore", trained_run.run_dir, "--projection", "umap", "--no-browser")
    assert "pip install umap-learn" in line
    assert "--n must be at least 1" in cli_error(capsys, "explore", trained_run.run_dir, "--n", 0, "--no-browser")
    assert "--port must be between" in cli_error(capsys, "explore", trained_run.run_dir, "--port", 70000)
    assert "no test split" in cli_error(capsys, "explore", trained_run.run_dir, "--split", "test", "--port", 0,
                                        "--no-browser")


def test_loopback_by_default_and_a_warning_for_a_public_address(capsys, trained_run, no_serving):
    served, opened = no_serving
    rc, out, err = run_main(capsys, "explore", trained_run.run_dir, "--port", 0, "--n", 16)
    assert rc == 0 and err == ""
    assert served[-1][1][0] == "127.0.0.1" and opened == [re.search(r"open (\S+)", out).group(1)]
    assert re.search(r"open http://127\.0\.0\.1:\d+/ ", out) and "16 val images, map by pca" in out
    rc, out, err = run_main(capsys, "explore", trained_run.run_dir, "--port", 0, "--host", "0.0.0.0", "--n", 16,
                            "--no-browser")
    assert rc == 0 and served[-1][1][0] == "0.0.0.0" and len(opened) == 1
    assert err.startswith("vaelab: warning: serving on 0.0.0.0: anyone who can reach this machine")
    # the loopback server answers only loopback Host names; a public one any
    from starlette.testclient import TestClient

    assert TestClient(served[0][0], base_url="http://evil.example").get("/api/info").status_code == 400
    assert TestClient(served[1][0], base_url="http://evil.example").get("/api/item/0").status_code == 200


def test_the_command_serves_the_page_until_interrupted(trained_run):
    import signal

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "explore", str(trained_run.run_dir), "--port", "0",
                             "--no-browser", "--n", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env())
    try:
        url, lines = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.match(r"open (http://127\.0\.0\.1:\d+/)", line)
            url = m.group(1) if m else None
        assert url, "".join(lines) + proc.stderr.read()
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "vaelab explore" in page.text
        info = httpx.get(url + "api/info", timeout=30).json()
        assert info["n"] == 16 and info["latent_dim"] == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_responses_do_not_wait_for_delayed_acks(explorer_app):
    """The listening socket says TCP, so asyncio sets TCP_NODELAY on each connection; without
    it every response waited ~40 ms for the client's delayed ACK (Nagle's algorithm)."""
    import statistics

    import httpx

    from vaelab.explore.server import BackgroundServer, bind

    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
    with BackgroundServer(explorer_app) as server, httpx.Client() as client:
        times = []
        for _ in range(30):
            t = time.perf_counter()
            assert client.post(server.url + "api/decode", json={"code": [0, 0, 0, 0]}).status_code == 200
            times.append(time.perf_counter() - t)
    assert statistics.median(times) < 0.030, times  # ~1-5 ms here, >= 40 ms with the bug


@pytest.fixture(scope="module")
def explorer_app(trained_run):
    from vaelab.explore.app import make_app

    return make_app(trained_run, n=16)
