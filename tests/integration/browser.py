"""Headless Chromium for the browser tests, driven by Selenium through Debian's chromedriver.

Why Selenium and not Chromium's own ``--dump-dom`` / ``--screenshot``: the Snakemake report is a React
application whose experiments, tables (HTML in iframes) and panels appear only after clicking through its
menu, and the MLflow UI loads its runs asynchronously; the CLI flags capture only the first rendering of
one URL. WebDriver clicks like a user, waits for elements, switches into the table iframes and takes a
screenshot of any view. Debian's ``chromium-driver`` matches Debian's ``chromium`` exactly, and the driver
path is given explicitly, so Selenium Manager never tries to download a driver (there is no network).

Tests skip with the reason when chromium, chromedriver or selenium is missing (``.ci/run`` installs the
first two from Debian's packages; selenium is in the ``dev`` extras).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def chromium_paths() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    return browser, driver


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip the test saying what is missing."""
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        pytest.skip("browser test: needs Debian's chromium and chromium-driver "
                    f"(apt-get install chromium chromium-driver; found chromium={browser}, chromedriver={driver})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser test: needs selenium (pip install -e '.[dev]')")
    return browser, driver


@contextmanager
def chromium():
    """A headless Chromium WebDriver with a fresh profile; always quit (the driver stops the browser)."""
    browser, driver_path = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medkd-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy; raise AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # element not there yet, stale during a React re-render
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" ({last_exc})" if last_exc else ""))


def click_text(driver, text: str, tag: str = "*", timeout: float = 30.0):
    """Click the first visible element ``tag`` whose own text is ``text`` (menu entries, list rows)."""
    from selenium.webdriver.common.by import By

    def find():
        for el in driver.find_elements(By.XPATH, f"//{tag}[normalize-space(text())={_xpath_literal(text)}]"):
            if el.is_displayed():
                return el
        return None

    el = wait_for(find, timeout, what=f"a visible element with text {text!r}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()
    return el


def _xpath_literal(s: str) -> str:
    if "'" not in s:
        return f"'{s}'"
    return "concat('" + s.replace("'", "', \"'\", '") + "')"
