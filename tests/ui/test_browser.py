"""`coe ui` started as users start it, on a free loopback port, and a real headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium) using it: a comparison on the replay pool, every page,
a cancelled live comparison, a screenshot of each page (`SCREENSHOTS_DIR=docs` keeps them there)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from coe.registry import load_pool
from tests.conftest import DATA_DIR, REPO
from tests.ui.conftest import REPLAY_POOL

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL_HINT = (
    "the browser test needs Debian's Chromium and its driver: apt-get install -y chromium chromium-driver "
    "(make test installs them when it runs as root)"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)
FUSED = re.compile(r"^(majority|weighted) → ([A-J]) (right|wrong)$", re.MULTILINE)
QUESTION = "8453"  # "Find the median in the set of data 23, 13, 18, 29, 32, 25.": the routers disagree


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def coe_ui(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", "from coe.cli import main; main()", "ui", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def server_env(ui_database: str, weights_cache: Path) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COE_")}
    return {
        **clean,
        "COE_DATABASE_URL": ui_database,
        "COE_CACHE_DIR": str(weights_cache),
        "COE_DATA_DIR": str(DATA_DIR),
    }


@pytest.fixture(scope="module")
def server(server_env: dict[str, str]) -> Iterator[str]:
    """`coe ui --pool replay-mmlu-pro-ref8 --port P`, up when its health check answers."""
    port = free_port()
    process = coe_ui("--pool", REPLAY_POOL, "--port", str(port), env=server_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"coe ui exited with {process.returncode}:\n{process.stdout.read() if process.stdout else ''}"
                )
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(INSTALL_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page_text(browser: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.TAG_NAME, "body").text)


def wait_for_text(browser: WebDriver, text: str, timeout: float = 120) -> str:
    """The page's text once `text` is in it (Streamlit renders over a websocket, after the load)."""
    return wait_until(browser, lambda shown: text in shown, f"{text!r} on the page", timeout)


def wait_until(browser: WebDriver, done: Callable[[str], bool], what: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not done(shown := page_text(browser)):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; the page shows:\n{shown[:3000]}")
        time.sleep(0.3)
    return shown


def click_button(browser: WebDriver, label: str, timeout: float = 60) -> None:
    """Click the button labelled `label` once Streamlit has drawn it."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while not (buttons := [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == label]):
        if time.monotonic() > deadline:
            labels = [b.text for b in browser.find_elements(By.TAG_NAME, "button")]
            raise AssertionError(f"no button {label!r}; buttons: {labels}")
        time.sleep(0.3)
    buttons[0].click()


def save(browser: WebDriver, folder: Path, name: str) -> Path:
    """A screenshot of the whole page (the window made as tall as Streamlit's content), in 256 colours."""
    from PIL import Image

    measure = "return Math.max(...Array.from(document.querySelectorAll('*'), element => element.scrollHeight));"
    height = 0
    for _ in range(3):  # the layout settles at the new size: grow until the content fits
        wanted = min(int(browser.execute_script(measure)) + 40, 4000)
        if wanted <= height:
            break
        height = wanted
        browser.set_window_size(1440, height)
        time.sleep(1.0)  # charts lay out again
    path = folder / f"ui-{name}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    browser.set_window_size(1440, 1000)
    return path


def test_coe_ui_rejects_a_missing_pool_in_one_line(server_env: dict[str, str]) -> None:
    process = coe_ui("--pool", "no-such-pool", "--port", str(free_port()), env=server_env)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and "no pool 'no-such-pool'" in output and "Traceback" not in output


def test_a_browser_compares_routers_and_opens_every_page(browser: WebDriver, server: str, screenshots: Path) -> None:
    browser.get(f"{server}/?routers=best-single,all,random&id={QUESTION}")
    wait_for_text(browser, "Find the median in the set of data 23, 13, 18, 29, 32, 25.")
    click_button(browser, "Compare")
    text = wait_until(browser, lambda shown: len(FUSED.findall(shown)) == 6, "three routers × two fused answers")
    fused = FUSED.findall(text)
    assert all(expert in text for expert in load_pool(REPLAY_POOL, data_dir=DATA_DIR)), "`all` shows every expert"
    assert ("majority", "J", "right") in fused and ("majority", "B", "wrong") in fused  # all vs best-single
    save(browser, screenshots, "compare")

    for path, heading, marker in (
        ("experts", "Experts of pool replay-mmlu-pro-ref8", "overall accuracy"),
        ("evaluations", "Evaluations", "Accuracy per category"),
        ("traffic", "Traffic", "Latency by model"),
    ):
        browser.get(f"{server}/{path}")
        text = wait_for_text(browser, marker)
        assert heading in text and "Traceback" not in text
        time.sleep(1.5)  # the charts draw after the text
        save(browser, screenshots, path)


def test_a_browser_cancels_a_live_comparison(browser: WebDriver, server: str) -> None:
    browser.get(f"{server}/?pool=embedded&routers=all&id={QUESTION}")
    wait_for_text(browser, "Find the median")
    click_button(browser, "Compare")
    wait_for_text(browser, "Cancel")
    click_button(browser, "Cancel")
    text = wait_for_text(browser, "Comparison cancelled", timeout=30)
    assert "expert answers generated once" not in text
