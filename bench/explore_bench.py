"""vaelab explore: the decode round trip, from a real client, against the real command.

For each run, starts ``vaelab explore RUN --port 0 --no-browser`` as its own process (the
server as a user runs it, 5,000 test images on the map), then measures:

- ``http``: httpx (one keep-alive connection) posts a code to /api/decode, receives the
  JSON and decodes the PNG: request to picture in hand, as a slider drag sends them
  (a random walk in one dimension around a test image's code);
- ``http_point``: the same for spots on the map (the PCA inverse projection first);
- ``browser``: headless chromium runs the page's own path (fetch, JSON, the <img>
  updated and decoded, the map redrawn) for each code: request to updated picture;
- ``burst``: 200 slider input events 4 ms apart in the browser, faster than pictures can
  come back: how many requests the page sent (throttled: one in flight, only the latest
  waiting) and how long after the last event its picture was on the page.

Target (issue 14): median round trip <= 50 ms for the MNIST presets on a 2-core CPU;
the 95th percentile is reported too.

    python bench/explore_bench.py                       # trains mlp-vae and conv-vae for 1 epoch if needed
    python bench/explore_bench.py --run runs/mlp-vae    # measure given runs
    python bench/explore_bench.py --run runs/mlp-vae --screenshot docs/images/explore.png
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, child_env, data_root, machine_info, machine_line, write_json  # noqa: E402

TARGET_MS = 50.0
BURST_JS = """
const done = arguments[arguments.length - 1];
const slider = document.getElementById('dim-0'), view = document.getElementById('view');
// the resource timing buffer holds 250 entries by default: empty it and make room
performance.clearResourceTimings(); performance.setResourceTimingBufferSize(100000);
const count = () => performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/decode')).length;
const before = count(), lo = Number(slider.min), hi = Number(slider.max), n = arguments[0];
let k = 0, last = 0;
const tick = () => {
  slider.value = String(lo + (hi - lo) * (k + 1) / (n + 1));
  slider.dispatchEvent(new Event('input')); last = performance.now(); k++;
  if (k < n) { setTimeout(tick, 4); return; }
  const want = Number(slider.value);
  const wait = () => {
    const code = JSON.parse(view.dataset.code);
    if (document.body.dataset.busy === '0' && Math.abs(code[0] - want) < 1e-5 * Math.max(1, Math.abs(want)))
      done({events: n, requests: count() - before, ms_after_last_event: performance.now() - last});
    else setTimeout(wait, 1);
  };
  wait();
};
tick();"""
ROUND_TRIPS_JS = """
const done = arguments[arguments.length - 1], codes = arguments[0], out = [];
(async () => {
  for (const c of codes) { const t = performance.now(); await window.vaelabExplore.decode(c); out.push(performance.now() - t); }
  done(out);
})();"""


def stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": round(statistics.median(s), 2), "p95_ms": round(s[int(0.95 * (len(s) - 1))], 2),
            "min_ms": round(s[0], 2), "max_ms": round(s[-1], 2), "n": len(s)}


def slider_walk(start: list[float], n: int, seed: int) -> list[list[float]]:
    """Codes as a slider drag makes them: one dimension moving in small steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, code = [], list(start)
    for i in range(n):
        dim = (i // 50) % len(code)  # a new slider every 50 steps
        code = list(code)
        code[dim] = float(np.clip(code[dim] + rng.normal(0, 0.05), -3, 3))
        out.append(code)
    return out


def start_server(run: Path, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "explore", str(run), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        m = re.match(r"open (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.wait()
    sys.exit(f"vaelab explore did not start: {proc.stderr.read()[-2000:]}")


def measure_http(url: str, codes: list[list[float]], points: list[list[float]], warmup: int) -> dict:
    import httpx
    from PIL import Image

    def one(client, body) -> float:
        t = time.perf_counter()
        r = client.post(url + "api/decode", json=body)
        r.raise_for_status()
        png = base64.b64decode(r.json()["png"].split(",", 1)[1])
        Image.open(io.BytesIO(png)).load()  # the picture in hand
        return (time.perf_counter() - t) * 1000

    with httpx.Client(timeout=30) as client:
        for c in codes[:warmup]:
            one(client, {"code": c})
        http = [one(client, {"code": c}) for c in codes]
        http_point = [one(client, {"point": p}) for p in points]
    return {"http": stats(http), "http_point": stats(http_point)}


def measure_browser(url: str, codes: list[list[float]], warmup: int) -> dict | None:
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        print("  browser: skipped (chromium and chromedriver are needed)")
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1400", f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(flag)
    opts.binary_location = binary
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.set_script_timeout(300)
        driver.get(url)
        deadline = time.monotonic() + 60
        while driver.execute_script("return document.body.dataset.ready") != "1":
            if time.monotonic() > deadline:
                sys.exit("the page did not become ready in 60 s")
            time.sleep(0.05)
        driver.execute_async_script(ROUND_TRIPS_JS, codes[:warmup])
        browser = driver.execute_async_script(ROUND_TRIPS_JS, codes)
        burst = driver.execute_async_script(BURST_JS, 200)
    finally:
        driver.quit()
    burst["ms_after_last_event"] = round(burst["ms_after_last_event"], 1)
    return {"browser": stats(browser), "burst": burst}


def screenshot_tour(url: str, out: Path) -> None:
    """The README's picture: a map click, A and B, an interpolation, class samples, a hovered
    point and an uploaded hand-drawn 7, then the whole page."""
    from PIL import Image, ImageDraw
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    seven = Path(tempfile.mkdtemp()) / "my-seven.png"
    im = Image.new("L", (200, 200), 0)  # white strokes on black, as MNIST draws digits
    ImageDraw.Draw(im).line([(45, 45), (150, 45), (85, 170)], fill=255, width=22, joint="curve")
    im.save(seven)
    opts = webdriver.ChromeOptions()
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1280,1400", f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium")
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)

    def idle(timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        time.sleep(0.1)
        while d.execute_script("return document.body.dataset.busy") != "0" and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        d.get(url)
        while d.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.05)
        canvas = d.find_element(By.ID, "map")
        for (dx, dy), end in (((-170, 60), "set-a"), ((150, -90), "set-b")):
            ActionChains(d).move_to_element_with_offset(canvas, dx, dy).click().perform()
            idle()
            d.find_element(By.ID, end).click()
        d.find_element(By.ID, "interp-run").click()
        idle()
        Select(d.find_element(By.ID, "sample-class")).select_by_visible_text("3")
        d.find_element(By.CSS_SELECTOR, '#sampler-buttons button[data-sampler="class-gaussian"]').click()
        idle(600)
        d.find_element(By.ID, "upload").send_keys(str(seven))
        idle()
        t_slider = d.find_element(By.ID, "interp-t")
        ActionChains(d).click_and_hold(t_slider).move_by_offset(-60, 0).release().perform()
        idle()
        d.execute_script("arguments[0].scrollIntoView()", canvas)
        u, v = d.execute_script("return window.vaelabExplore.pointAt(5)")
        size = canvas.size
        ActionChains(d).move_to_element_with_offset(canvas, int(u - size["width"] / 2), int(v - size["height"] / 2)).perform()
        idle()
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1280, height + 100)
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(out))
    finally:
        d.quit()
    print(f"wrote {out}")


def train_if_needed(preset: str, root: Path, epochs: int, limit: int | None) -> Path:
    import vaelab

    run = OUT / "explore" / preset
    if not (run / "model.safetensors").is_file():
        overrides = [f"train.epochs={epochs}", f"data.data_dir={root}"] + ([f"data.limit={limit}"] if limit else [])
        print(f"training {preset} ({epochs} epoch) into {run}")
        vaelab.train(preset, run, overrides=overrides, log=lambda *_: None)
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], help="a trained run to explore (repeatable)")
    p.add_argument("--presets", default="mlp-vae,conv-vae", help="trained (1 epoch) when no --run is given")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="training images, when training")
    p.add_argument("--n", type=int, default=500, help="round trips per measurement")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--out", default=str(OUT / "explore_bench.json"))
    p.add_argument("--screenshot", help="also save a screenshot of the first run's page after a short tour")
    args = p.parse_args(argv)
    root = data_root("explore_bench")
    env = child_env(root)
    runs = [Path(r) for r in args.run] or [train_if_needed(s, root, args.epochs, args.limit)
                                           for s in args.presets.split(",")]
    results = {"machine": machine_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "loadavg_1min_before": round(os.getloadavg()[0], 2), "target_median_ms": TARGET_MS, "runs": {}}
    for run in runs:
        import httpx

        proc, url = start_server(run, env)
        try:
            info = httpx.get(url + "api/info", timeout=60).json()
            pts = info["points"]
            start = httpx.get(url + "api/item/0", timeout=60).json()["code"]
            codes = slider_walk(start, args.n, seed=0)
            points = [pts[i % len(pts)] for i in range(0, args.n * 7, 7)]
            row = {"model": info["model"], "latent_dim": info["latent_dim"], "n_map": info["n"],
                   **measure_http(url, codes, points, args.warmup)}
            if not args.no_browser:
                row.update(measure_browser(url, codes, args.warmup) or {})
            if args.screenshot and run == runs[0]:
                screenshot_tour(url, Path(args.screenshot))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        results["runs"][str(run)] = row
        print(f"{run}: {row['model']}")
        for k in ("http", "http_point", "browser"):
            if k in row:
                s = row[k]
                print(f"  {k:<11} median {s['median_ms']:6.2f} ms   p95 {s['p95_ms']:6.2f} ms   "
                      f"(min {s['min_ms']:.2f}, max {s['max_ms']:.2f}, n {s['n']})")
        if "burst" in row:
            b = row["burst"]
            print(f"  burst       {b['events']} slider events -> {b['requests']} requests; "
                  f"picture up {b['ms_after_last_event']} ms after the last event")
    results["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    write_json(Path(args.out), results)
    print(machine_line(results["machine"]))
    print(f"wrote {args.out} (load average {results['loadavg_1min_before']} before, "
          f"{results['loadavg_1min_after']} after: the machine is shared, timings are noisy)")


if __name__ == "__main__":
    main()
