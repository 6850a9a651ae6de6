"""The live demo: stale-request dropping, the HTTP API, and the page in a real headless Chromium."""

import json
import os
import urllib.request
from pathlib import Path

import pytest


def test_stale_request_is_dropped_without_generating(tiny):
    from hypersd_demo.server import DemoState
    from hypersd_demo.models import build_generator

    gen, _ = build_generator(tiny)
    state = DemoState(gen, 32, "tiny")
    state.note("c", 5)
    assert state.generate("old prompt", 0, "c", 3) is None
    assert gen.stats.images == 0 and state.dropped == 1
    out = state.generate("new prompt", 0, "c", 6)
    assert out["seq"] == 6 and out["image"].startswith("data:image/png;base64,") and out["ms"] > 0


def _post(url, body):
    req = urllib.request.Request(
        url + "generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def demo_url(tokenizer_path):
    """`python -m hypersd_demo` on a free loopback port with the embedded model (or its stand-in)."""
    from benchmarks.demo_load import start_demo

    try:
        proc, port = start_demo(
            ["--threads", "1", "--debounce-ms", "30"], {"HYPERSD_TOKENIZER": str(tokenizer_path)}, 120
        )
    except RuntimeError as e:
        pytest.fail(str(e))
    url = f"http://127.0.0.1:{port}/"
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_demo_http_api(demo_url):
    with urllib.request.urlopen(demo_url, timeout=30) as r:
        page = r.read().decode()
    assert 'id="prompt"' in page and 'id="image"' in page and "images/s" in page
    status, body = _post(demo_url, {"prompt": "a handwritten digit 3", "seed": 1, "seq": 1, "client": "t"})
    first = json.loads(body)
    assert status == 200 and first["seq"] == 1 and first["image"].startswith("data:image/")
    status, body = _post(demo_url, {"prompt": "a handwritten digit 8", "seed": 1, "seq": 2, "client": "t"})
    assert json.loads(body)["image"] != first["image"]
    status, _ = _post(demo_url, {"prompt": "late", "seed": 1, "seq": 1, "client": "t"})
    assert status == 204, "a request older than one already seen must be dropped"
    with urllib.request.urlopen(demo_url + "info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["text_encoder_calls"] == 2 and info["dropped_stale"] >= 1


@pytest.fixture
def browser():
    import browser as chrome

    reason = chrome.missing()
    if reason:
        pytest.skip(reason)
    with chrome.chromium(timeout=60) as driver:
        yield driver


def _image_state(driver):
    return driver.execute_script(
        "const i = document.getElementById('image');"
        "return [i.getAttribute('src') || '', i.dataset.prompt || '', i.complete && i.naturalWidth,"
        " document.getElementById('ms').textContent, document.getElementById('ips').textContent];"
    )


def _wait_for(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        state = _image_state(d)
        return state if cond(state) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)


def _pixels(driver):
    """The displayed image's decoded RGBA pixels, read back through a canvas."""
    return driver.execute_script(
        "const i = document.getElementById('image'); const c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d');"
        "g.drawImage(i, 0, 0); return Array.from(g.getImageData(0, 0, c.width, c.height).data);"
    )


def test_page_follows_typing_in_headless_chromium(demo_url, browser):
    from selenium.webdriver.common.by import By

    browser.get(demo_url)
    box = browser.find_element(By.ID, "prompt")
    box.send_keys("a handwritten digit 3")
    st = _wait_for(browser, lambda s: s[1] == "a handwritten digit 3" and s[2])
    src1, px1 = st[0], _pixels(browser)
    assert src1.startswith("data:image/") and len(px1) > 0 and max(px1[:-1:4]) > 0
    assert float(st[3]) > 0 and float(st[4]) > 0, f"ms / images/s readout missing: {st[3:]}"
    box.clear()
    box.send_keys("a handwritten digit 8")
    st = _wait_for(browser, lambda s: s[1] == "a handwritten digit 8" and s[2] and s[0] != src1)
    px2 = _pixels(browser)
    assert len(px2) == len(px1) and px2 != px1, "the image must change with the prompt"
    assert float(st[3]) > 0 and float(st[4]) > 0
    assert browser.find_element(By.ID, "status").text == ""


def _draw(driver, points):
    """One mouse stroke through ``points`` (pixels from the canvas centre)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    chain = ActionChains(driver).move_to_element_with_offset(canvas, *points[0]).click_and_hold()
    prev = points[0]
    for p in points[1:]:
        chain = chain.move_by_offset(p[0] - prev[0], p[1] - prev[1])
        prev = p
    chain.release().perform()


def test_page_follows_drawing_in_headless_chromium(demo_url, browser, tmp_path):
    """Draw a stroke with the mouse: an image made with the drawing arrives; draw another: it changes.
    HYPERSD_SCREENSHOT=path also saves the page (the README's scribble demo picture)."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(940, 860)
    browser.get(demo_url)
    assert browser.find_element(By.ID, "canvas").is_displayed(), "the embedded model's page must offer a canvas"
    box = browser.find_element(By.ID, "prompt")
    box.send_keys("a handwritten digit 7")
    st = _wait_for(browser, lambda s: s[1] == "a handwritten digit 7" and s[2])
    src0 = st[0]
    control = lambda: browser.execute_script("return document.getElementById('image').dataset.control")  # noqa: E731
    assert control() == "0"
    _draw(browser, [(-70, -90), (70, -90), (0, 100)])  # a 7
    st = _wait_for(browser, lambda s: s[0] != src0 and s[2] and control() == "1")
    src1, px1 = st[0], _pixels(browser)
    assert browser.find_element(By.ID, "status").text == ""
    _draw(browser, [(-60, 0), (60, 0)])  # a crossbar
    _wait_for(browser, lambda s: s[0] != src1 and s[2] and control() == "1")
    px2 = _pixels(browser)
    assert len(px2) == len(px1) and px2 != px1, "the image must change with the drawing"
    shot = Path(os.environ.get("HYPERSD_SCREENSHOT") or tmp_path / "scribble_demo.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
