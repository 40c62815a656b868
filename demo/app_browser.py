#!/usr/bin/env python
"""Drive the web demo (demo/app.py) in headless Chromium: used by the browser test and to make the README's
screenshot.

    .venv/bin/python demo/app_browser.py --output docs/images/web_demo.png    # serves `make app`'s default model

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and the
``selenium`` package; nothing is downloaded by selenium (the driver's path is given).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, as root, on a machine whose outside network is closed: no background calls home at every start.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1400,1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: list[str], log_path: str, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``demo/app.py ARGS`` on a free local port, once its page answers; (process, url)."""
    port = free_port()
    log = open(log_path, "w")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "demo", "app.py"), "--port", str(port), *args],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"demo/app.py exited (rc={proc.returncode}):\n{f.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"demo/app.py did not serve {url} within {timeout:.0f} s (log: {log_path})")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class DemoPage:
    """The demo page in a headless Chromium, with the steps a user takes."""

    def __init__(self, url: str, timeout: float = 120.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.timeout = timeout
        self.url = url
        self.reload()

    def _wait(self, condition, what: str):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, self.timeout, poll_frequency=0.2).until(
            condition, message=f"timed out waiting for {what}")

    def _find(self, css: str):
        from selenium.webdriver.common.by import By

        return self._wait(lambda d: d.find_element(By.CSS_SELECTOR, css), css)

    def _all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def reload(self) -> None:
        """A fresh page: nothing uploaded, nothing typed, no messages."""
        self.driver.get(self.url)
        self._find("#detect")

    def upload(self, path: str) -> None:
        """Choose a file in the picture box; returns once the page shows it (or refuses it with a message)."""
        before = self.messages()
        self._find("#picture input[type=file]").send_keys(os.path.abspath(path))
        self._wait(lambda d: self._all("#picture img") or self.messages() != before, "the upload")

    def pick_sample(self, index: int = 0) -> None:
        """Click a sample under the picture box; returns once its picture and prompt are in the inputs."""
        self._find(f'[data-testid="dataset-cell-{index}-0"]').click()
        self._wait(lambda d: self._all("#picture img") and self._find("#prompt textarea").get_attribute("value"),
                   "the sample's picture and prompt")

    def prompt(self) -> str:
        return self._find("#prompt textarea").get_attribute("value")

    def type_prompt(self, text: str) -> None:
        box = self._find("#prompt textarea")
        box.clear()
        box.send_keys(text)

    def set_one_phrase_per_region(self, on: bool) -> None:
        box = self._find("#one_phrase input[type=checkbox]")
        if box.is_selected() != on:
            box.click()

    def detect(self, expect_message: str | None = None) -> None:
        """Click "Detect" and wait for this click's result, or for a message containing ``expect_message``."""
        before = self.summary()
        self._find("#detect").click()
        if expect_message is not None:
            self._wait(lambda d: any(expect_message in m for m in self.messages()), f"a message with {expect_message!r}")
            return
        self._wait(lambda d: self.messages() or (not self.busy() and self.summary() not in ("", before)),
                   "the result or a message")

    def summary(self) -> str:
        """The line under the drawn picture (the markdown text only, not gradio's progress timer)."""
        found = self._all("#summary .prose")
        return found[0].text.strip() if found else ""

    def busy(self) -> bool:
        """A request of this page is queued or running (gradio shows its progress tracker on the outputs)."""
        return any("hide" not in (e.get_attribute("class") or "").split()
                   for e in self._all("#result [data-testid=status-tracker], #summary [data-testid=status-tracker]"))

    def messages(self) -> list[str]:
        """The texts of the error boxes on the page, oldest first (gradio groups them in one box)."""
        return [e.text for e in self._all("[data-testid=toast-body]")]

    def result_image_src(self) -> str:
        images = self._all("#result img")
        return images[0].get_attribute("src") if images else ""

    def table(self) -> list[list[str]]:
        """The detections table's body rows (those rendered: gradio draws the rows in view) as cell texts."""
        rows = []
        for row in self._all("#detections [role=row].virtual-row"):
            cells = [cell.text.strip() for cell in row.find_elements("css selector", "[role=gridcell]")]
            if any(cells):
                rows.append(cells)
        return rows

    def screenshot(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(path)

    def close(self) -> None:
        self.driver.quit()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="docs/images/web_demo.png")
    parser.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="arguments for demo/app.py")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "demo"))
    os.chdir(REPO)
    import make_demo

    record = make_demo.synthetic_sample()
    proc, url = start_app(args.app_args, "output/app_browser.log")
    try:
        page = DemoPage(url)
        page.upload(record["file_name"])
        page.type_prompt(make_demo.tiny_prompt(record) + ".")
        page.detect()
        if page.messages():
            raise RuntimeError(f"the page shows an error: {page.messages()[-1]}")
        page.screenshot(args.output)
        summary = page.summary()
        page.close()
    finally:
        stop_app(proc)
    print(f"[app_browser] {summary}\n[app_browser] screenshot: {args.output}")
    return args.output


if __name__ == "__main__":
    main()
