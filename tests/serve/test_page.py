"""The page at `/` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): an upload shows the server's overlay and a legend, hovering a segment names its
class and score, and a bad file shows the server's error in the page."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from panoptic_train.data.io import decode_segment_ids
from panoptic_train.serve.launch import ServerProcess

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        "needs Debian's browser: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
# Offline, quiet, no GPU: nothing in the browser reaches beyond 127.0.0.1.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    profile = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile / 'profile'}"):
        options.add_argument(flag)
    # An explicit driver path: selenium then never looks for (or downloads) a browser or driver.
    service = webdriver.ChromeService(str(CHROMEDRIVER), log_output=str(profile / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, server: ServerProcess) -> webdriver.Chrome:
    browser.get(server.url)
    WebDriverWait(browser, 20).until(
        lambda driver: "dinov3/vitt16-eomt" in driver.find_element(By.ID, "model-info").text
    )
    return browser


def _upload(page: webdriver.Chrome, path: Path, state: str) -> None:
    page.find_element(By.ID, "file-input").send_keys(str(path))
    WebDriverWait(page, 30).until(
        lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
    )


def _canvas_rgb(page: webdriver.Chrome, canvas_id: str) -> np.ndarray:
    width, height, pixels = page.execute_script(
        """
        const canvas = document.getElementById(arguments[0]);
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        return [canvas.width, canvas.height, Array.from(data)];
        """,
        canvas_id,
    )
    return np.asarray(pixels, dtype=np.uint8).reshape(height, width, 4)


def test_an_upload_shows_the_overlay_and_hovering_names_the_segment(
    page: webdriver.Chrome, server: ServerProcess, images: list[Path]
) -> None:
    path = images[0]
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        expected = client.post("/predict", params={"overlay": "true"}, content=path.read_bytes())
    body = expected.json()
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))))
    ids = decode_segment_ids(
        np.asarray(Image.open(io.BytesIO(base64.b64decode(body["panoptic_png"]))))
    )

    _upload(page, path, "ready")

    # the canvas shows the server's overlay, pixel for pixel, not the plain image
    shown = _canvas_rgb(page, "view")
    assert np.array_equal(shown[..., :3], overlay)
    assert not np.array_equal(shown[..., :3], np.asarray(Image.open(path).convert("RGB")))
    legend = [item.text for item in page.find_elements(By.CSS_SELECTOR, "#legend .name")]
    assert sorted(legend) == sorted({segment["name"] for segment in body["segments"]})

    # hover the most interior pixel of the largest segment
    segment = max(body["segments"], key=lambda s: s["area"])
    depth = ndimage.distance_transform_edt(np.pad(ids == segment["id"], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    assert depth[y, x] >= 2, "the segment has an interior to point at"
    canvas = page.find_element(By.ID, "view")
    scale = canvas.size["width"] / ids.shape[1]  # CSS pixels per image pixel
    ActionChains(page).move_to_element_with_offset(
        canvas,
        round((x + 0.5 - ids.shape[1] / 2) * scale),
        round((y + 0.5 - ids.shape[0] / 2) * scale),
    ).perform()
    hover = page.find_element(By.ID, "hover-info")
    WebDriverWait(page, 10).until(lambda _: hover.is_displayed())
    assert hover.text.startswith(f"{segment['name']} · score {segment['score']:.3f}")
    highlighted = _canvas_rgb(page, "highlight")
    assert highlighted[y, x, 3] == 0 and highlighted[..., 3].max() > 0  # the rest is dimmed
    active = page.find_elements(By.CSS_SELECTOR, "#legend li.active .name")
    assert [item.text for item in active] == [segment["name"]]


def test_a_bad_file_shows_the_servers_error(page: webdriver.Chrome, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels")
    _upload(page, notes, "error")
    error = page.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "is not an image" in error.text and "notes.png" in error.text
