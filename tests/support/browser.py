"""Debian's headless Chromium under Selenium, shared by the console's browser tests: the
driver, whole-page screenshots under artifacts/ (a CI artifact) and one way to follow a link or
submit a form that waits for the next page."""

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("OUTBOX_ARTIFACTS_DIR", "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,1100",
)
# Set on the page being left; a new document has a new window object, so the mark is gone
# once the next page is there.
_MARK = "window.__outboxLeaving = true"
_ARRIVED = "return window.__outboxLeaving === undefined && document.readyState === 'complete'"


def chromium() -> Iterator[Any]:
    """A headless Chromium driver, quit afterwards; skipped where Chromium is not installed,
    failed under CI (which installs it)."""
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium/chromedriver are missing: .ci/run installs them")
        pytest.skip("no chromium + chromium-driver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def follow(driver: Any, element: Any, timeout: float = 30) -> None:
    """Click, then wait until the next page has loaded.

    A click returns before the navigation ends, so on a loaded machine the old page is still
    there when the next line reads it. Waiting for the old element to go stale is not enough:
    asked mid-navigation, chromedriver can answer "Node with given id does not belong to the
    document" (CI saw it). The wait marks the old page's window instead and polls, treating any
    driver error during the switch as "not yet"."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    driver.execute_script(_MARK)
    element.click()
    WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(_ARRIVED)
    )


def screenshot(driver: Any, name: str) -> Path:
    """The whole page, below the fold too (Chromium's DevTools capture)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"\nconsole screenshot: {path.resolve()}")
    return path
