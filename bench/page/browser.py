"""A headless Chromium for the page's browser tests (tests/service/test_page.py, test_cors.py) and its
screenshot (bench/page/screenshot.py): Debian's `chromium` and `chromium-driver` packages (`make browser`
installs them where it may), driven by Selenium.

Both paths are given to Selenium, so its Selenium Manager never runs and nothing is downloaded; the
flags keep Chromium from reaching the network on its own (updates, sync, field trials) and give
each run a fresh profile.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-first-run", "--window-size=1100,1000",
)  # fmt: skip
WAIT_S = 30  # for an answer on the page: tiny models answer in milliseconds, a busy box is slower


def missing() -> str | None:
    """Why the browser tests cannot run here, in one line; None if they can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if absent:
        return (
            f"no {' or '.join(absent)}: Debian's chromium and chromium-driver are needed "
            "(`make browser` installs them as root where apt-get exists)"
        )
    return None


def start(profile: Path):
    """A new headless Chromium with its own profile folder, driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # and should Selenium Manager run after all, it fetches nothing
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failures
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(WAIT_S)
    return driver


def console(driver) -> str:
    """The page's console messages so far, one per line (shown when a browser test fails)."""
    return "\n".join(f"{entry['level']}: {entry['message']}" for entry in driver.get_log("browser"))
