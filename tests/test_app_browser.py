"""The web demo in a real browser: demo/app.py serving the embedded model on a free local port, driven by
headless Chromium (Debian's chromium + chromium-driver, installed here when missing and allowed; otherwise the
test is skipped with the reason). A synthetic picture is uploaded and its names typed; the drawn picture and the
table appear with those names; each bad input shows its message and the server goes on serving."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from tiny_trained import REPO

sys.path.insert(0, os.path.join(REPO, "demo"))
import app_browser  # demo/app_browser.py

from glip_d2.data.datasets.synthetic import render_sample
from glip_d2.embedded_model import CONFIG_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.slow


def _ensure_chromium():
    """Debian's chromium and its driver: present, or installed with apt-get (as root), or the test is skipped."""
    if os.path.exists(app_browser.CHROMIUM) and os.path.exists(app_browser.CHROMEDRIVER):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium/chromium-driver are not installed and apt-get cannot install them here (not root "
                    "or not Debian): apt-get install chromium chromium-driver")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install the browser ({' '.join(cmd)}: rc={proc.returncode}): "
                        f"{proc.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    _ensure_chromium()
    folder = tmp_path_factory.mktemp("app")
    sample, names = _scene(folder, seed=11)
    proc, url = app_browser.start_app(["--config-file", CONFIG_FILE, "--weights", WEIGHTS_FILE,
                                       "--confidence-threshold", "0.3", "--one-phrase-per-region", "0.3",
                                       "--max-megapixels", "40", "--sample", sample, ". ".join(names) + "."],
                                      str(folder / "app.log"))
    browser = app_browser.DemoPage(url)
    yield browser, proc, names
    browser.close()
    app_browser.stop_app(proc)


def _scene(tmp_path, seed=3):
    image, objects = render_sample(np.random.default_rng(seed))
    path = str(tmp_path / "scene.png")
    cv2.imwrite(path, image)
    return path, sorted({o["name"] for o in objects})


def _check_result(browser, names):
    assert not browser.messages(), browser.messages()
    rows = browser.table()
    assert rows, "no detections table"
    assert {row[0] for row in rows} == set(names)  # each object found with its own name, nothing else
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    assert browser.summary().startswith(f"{len(rows)} detection")
    assert "/gradio_api/file=" in browser.result_image_src()  # the drawn picture came back


def test_upload_type_names_and_see_boxes(page, tmp_path):
    browser, _, _ = page
    path, names = _scene(tmp_path)
    browser.reload()
    browser.upload(path)
    browser.type_prompt(". ".join(names) + ".")
    browser.detect()
    _check_result(browser, names)
    browser.screenshot(str(tmp_path / "page.png"))
    assert os.path.getsize(tmp_path / "page.png") > 10_000


def test_pick_the_sample_and_see_boxes(page):
    browser, _, names = page
    browser.reload()
    browser.pick_sample(0)
    assert browser.prompt() == ". ".join(names) + "."
    browser.detect()
    _check_result(browser, names)


def test_bad_inputs_show_messages_and_the_server_keeps_serving(page, tmp_path):
    browser, proc, _ = page
    path, names = _scene(tmp_path, seed=5)
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "fake.png").write_text("not a picture either")
    huge = str(tmp_path / "huge.png")
    cv2.imwrite(huge, np.zeros((5000, 10000, 3), np.uint8))  # 50 megapixels (a small file: it is all zeros)
    cases = [  # (picture to upload, prompt, what the message must say)
        (None, "red star", "No picture"),
        (path, "", "prompt is empty"),
        (path, " ".join(["a red star next to a blue circle"] * 40), "token"),
        (str(tmp_path / "notes.txt"), "red star", "notes.txt"),
        (str(tmp_path / "fake.png"), "red star", "'fake.png' is not an image"),
        (huge, "red star", "50.0 megapixels (10000x5000)"),
    ]
    for upload, prompt, expected in cases:
        browser.reload()
        if upload:
            browser.upload(upload)
        browser.type_prompt(prompt)
        browser.detect(expect_message=expected)
        shown = "\n".join(browser.messages())
        assert expected in shown, f"{expected!r} not in the page's messages: {shown!r} (summary {browser.summary()!r})"
        assert proc.poll() is None, "the server stopped"
    browser.reload()  # still serving: a good request after all the bad ones
    browser.upload(path)
    browser.type_prompt(". ".join(names) + ".")
    browser.detect()
    _check_result(browser, names)
