"""vaelab explore in a real browser: Debian's chromium driven by selenium (chromium-driver).

The page is loaded for a tiny trained run; then the test clicks the map, drags a slider,
runs an interpolation and drags its t slider, and uploads an image. After each step the
picture the page shows (read back from the page through a canvas) must equal the model's
own ``decode`` of the code the page says it shows, pixel for pixel after the PNG round trip.
Skipped, with the reason, where chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from vaelab.explore.app import make_app  # noqa: E402
from vaelab.explore.explorer import Explorer  # noqa: E402
from vaelab.explore.server import BackgroundServer  # noqa: E402

# Headless on a machine with no network: nothing may try to phone home.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1400"]

READ_PIXELS = """
const img = arguments[0], c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(0, 0, c.width, c.height).data);"""


DROP_JS = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));"""


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _binaries() -> tuple[str, str]:
    browser = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium and chromedriver are needed for the browser tests: install Debian's `chromium` "
                    "and `chromium-driver` (missing: " + ", ".join(
                        n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None) + ")")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _binaries()
    opts = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def settled(driver, after_seq: int) -> dict:
    """Wait until the page shows a newer picture and nothing is in flight; its code and class."""
    view = driver.find_element(By.ID, "view")
    wait_for(lambda: int(view.get_attribute("data-seq") or 0) > after_seq
             and driver.execute_script("return document.body.dataset.busy") == "0", "the picture to update")
    return {"seq": int(view.get_attribute("data-seq")), "code": json.loads(view.get_attribute("data-code")),
            "cls": view.get_attribute("data-cls"), "point": view.get_attribute("data-point")}


def shown_pixels(driver, element) -> np.ndarray:
    """The picture as the browser decoded it: (H, W) grey levels (the page draws grey as R = G = B)."""
    w, h = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", element)
    rgba = np.array(driver.execute_script(READ_PIXELS, element), dtype=np.uint8).reshape(h, w, 4)
    assert (rgba[..., 3] == 255).all()
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    return rgba[..., 0]


def model_pixels(run, code, cls=None) -> np.ndarray:
    """The model's decode of ``code`` rounded to 8 bits in float32, as any float32 pipeline does
    (float64 arithmetic can round a value a hair from k + 0.5 the other way)."""
    img = run.decode(torch.tensor([code], dtype=torch.float32), cls)[0, 0]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def assert_shows_decode(driver, run, state, element_id="view"):
    cls = int(state["cls"]) if state["cls"] else None
    np.testing.assert_array_equal(shown_pixels(driver, driver.find_element(By.ID, element_id)),
                                  model_pixels(run, state["code"], cls))


def open_page(driver, url) -> dict:
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1", "the page to be ready", 60)
    return settled(driver, 0)


def test_map_slider_interpolation_and_upload_show_the_models_decode(browser, trained_run, tmp_path):
    ex = Explorer(trained_run, n=64)
    with BackgroundServer(make_app(ex)) as server:
        state = open_page(browser, server.url)
        assert_shows_decode(browser, trained_run, state)  # image 0's code, on load
        assert state["code"] == ex.codes[0].tolist()

        # 1. click the map: the spot's inverse PCA projection
        canvas = browser.find_element(By.ID, "map")
        ActionChains(browser).move_to_element_with_offset(canvas, 60, -40).click().perform()
        state = settled(browser, state["seq"])
        point = json.loads(state["point"])
        expected_code = ex.projection.pca.inverse_transform(np.array([point]))[0]
        np.testing.assert_allclose(state["code"], expected_code, rtol=1e-5, atol=1e-6)
        assert_shows_decode(browser, trained_run, state)
        browser.find_element(By.ID, "set-a").click()

        # 2. drag a slider: only that dimension moves
        slider = browser.find_element(By.ID, "dim-1")
        before = state["code"]
        ActionChains(browser).click_and_hold(slider).move_by_offset(70, 0).release().perform()
        state = settled(browser, state["seq"])
        value = float(slider.get_attribute("value"))
        assert state["code"][1] == pytest.approx(value, rel=1e-6) and state["code"][1] != pytest.approx(before[1])
        assert [c for i, c in enumerate(state["code"]) if i != 1] == [c for i, c in enumerate(before) if i != 1]
        assert_shows_decode(browser, trained_run, state)

        # 3. interpolate from A (the first spot's nearest image) to B (another one's), then drag t
        ActionChains(browser).move_to_element_with_offset(canvas, -120, 30).click().perform()
        state = settled(browser, state["seq"])
        browser.find_element(By.ID, "set-b").click()
        browser.find_element(By.ID, "interp-run").click()
        frames = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#strip img"), "the interpolation strip")
        assert len(frames) == 10
        a, b = (json.loads(f.get_attribute("data-code")) for f in (frames[0], frames[-1]))
        for f in frames:
            code = json.loads(f.get_attribute("data-code"))
            t = float(f.get_attribute("data-t"))
            np.testing.assert_allclose(code, (1 - t) * np.array(a) + t * np.array(b), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(shown_pixels(browser, f), model_pixels(trained_run, code))
        t_slider = browser.find_element(By.ID, "interp-t")
        ActionChains(browser).click_and_hold(t_slider).move_by_offset(50, 0).release().perform()
        state = settled(browser, state["seq"])
        t = float(t_slider.get_attribute("value"))
        assert 0 < t < 1
        np.testing.assert_allclose(state["code"], (1 - t) * np.array(a) + t * np.array(b), rtol=1e-5, atol=1e-6)
        assert_shows_decode(browser, trained_run, state)

        # 4. upload an image of the split: its own code, placed on the map
        data = trained_run.split()
        png = tmp_path / "digit.png"
        Image.fromarray(data.x[9, 0].numpy()).save(png)
        browser.find_element(By.ID, "upload").send_keys(str(png))
        state = settled(browser, state["seq"])
        assert state["code"] == trained_run.encode(data.batch(slice(9, 10)))[0].tolist()
        assert_shows_decode(browser, trained_run, state)
        np.testing.assert_array_equal(shown_pixels(browser, browser.find_element(By.ID, "upload-input")),
                                      data.x[9, 0].numpy())

        # dropped on the page rather than chosen: the same path
        b64 = base64.b64encode(png_bytes(data.x[11, 0].numpy())).decode()
        browser.execute_script(DROP_JS, b64)
        state = settled(browser, state["seq"])
        assert state["code"] == trained_run.encode(data.batch(slice(11, 12)))[0].tolist()
        assert_shows_decode(browser, trained_run, state)

        # a file that is no image: the server's one line, on the page
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        browser.find_element(By.ID, "upload").send_keys(str(bad))
        message = wait_for(lambda: browser.find_element(By.ID, "message").get_attribute("data-error"), "the error")
        assert "not an image vaelab can read" in message
        assert browser.find_element(By.ID, "message").is_displayed()

        shot = tmp_path / "explore.png"
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "/api/upload" not in e["message"]]
        assert errors == []  # the refused upload's 400 is the only failed request


def test_a_conditional_model_redraws_under_the_chosen_class(browser, trained_cvae):
    with BackgroundServer(make_app(Explorer(trained_cvae, n=32))) as server:
        state = open_page(browser, server.url)
        assert_shows_decode(browser, trained_cvae, state)
        select = Select(browser.find_element(By.ID, "decode-class"))
        target = "2" if state["cls"] != "2" else "1"
        select.select_by_value(target)
        after = settled(browser, state["seq"])
        assert after["cls"] == target and after["code"] == state["code"]
        assert_shows_decode(browser, trained_cvae, after)


def test_a_model_without_a_continuous_latent_gets_a_note_instead_of_the_map(browser, trained_run, monkeypatch):
    monkeypatch.setattr(trained_run.model, "capabilities", trained_run.model.capabilities - {"continuous"})
    with BackgroundServer(make_app(Explorer(trained_run, n=16))) as server:
        browser.get(server.url)
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready") == "1", "the page", 60)
        notes = browser.find_element(By.ID, "notes").text
        assert "lacks a continuous latent space: the map, the sliders and interpolation do not apply" in notes
        assert not browser.find_element(By.ID, "map").is_displayed()
        assert not browser.find_element(By.ID, "interp-panel").is_displayed()
        assert browser.find_element(By.ID, "anomalies").is_displayed()
        assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#sampler-buttons button")] == ["prior"]
