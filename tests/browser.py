"""A real browser for tests: Debian's chromium driven by Selenium through Debian's chromedriver.

Selenium speaks the WebDriver standard to ``/usr/bin/chromedriver`` (package
``chromium-driver``, installed by .ci/run with ``chromium``); the binaries are given
explicitly, so Selenium Manager never looks for, or downloads, a browser or a driver.

    with chrome(js=False) as driver:
        driver.get(url)
"""

from __future__ import annotations

import contextlib
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Fail (not skip) when the browser is missing: CI installs it, so its absence is a bug there."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: apt-get install -y chromium chromium-driver"


@contextlib.contextmanager
def chrome(js: bool = True, width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium session (quit at exit), JavaScript on or off, console logged.

    ``driver.get_log("browser")`` returns what the page logged, CSP violations included.
    """
    pytest.importorskip("selenium", reason="pip install -e '.[test]' installs selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-component-update",
                "--lang=en-US"):
        options.add_argument(arg)
    prefs = {"profile.managed_default_content_settings.javascript": 1 if js else 2}
    options.add_experimental_option("prefs", prefs)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        set_viewport(driver, width, height)
        yield driver
    finally:
        driver.quit()


def set_viewport(driver, width: int, height: int) -> None:  # noqa: ANN001 - a WebDriver
    """Size the window so that the page itself (the viewport) is ``width`` × ``height``.

    Works with JavaScript off too: chromedriver's scripts run whatever the page's setting.
    """
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    outer = driver.get_window_size()
    driver.set_window_size(width + outer["width"] - inner[0], height + outer["height"] - inner[1])


def full_page(driver, width: int, max_height: int = 4000) -> None:  # noqa: ANN001 - a WebDriver
    """Grow the viewport to the page's height (up to ``max_height``) for a whole-page screenshot."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, min(int(height), max_height))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails unless it starts like one."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])
