"""docs/page.png: the page at `/` answering a real photo, taken with the headless Chromium of the
browser tests (bench/page/browser.py) from a real resnet-serve on `--models`.

    python -m bench.page.screenshot --models models --out docs/page.png
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

from artifact import write_atomically
from bench import photos, servers
from bench.page import browser

PHOTO = "rocket.jpg"  # the real photo the page answers (scikit-image's, public domain by SpaceX), with model=auto
EXAMPLE = "ring.png"  # and one of the page's own examples, from the synthetic set
WIDTH = 1100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="models folder resnet-serve serves")
    parser.add_argument("--model", default="auto", help="the page's model choice (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("docs/page.png"))
    args = parser.parse_args(argv)
    reason = browser.missing()
    if reason:
        parser.error(reason)
    with tempfile.TemporaryDirectory() as scratch:
        server = servers.start_service(args.models, "", ("--providers", "cpu"), Path(scratch))
        driver = browser.start(Path(scratch) / "profile")
        try:
            png = _shoot(driver, server.url, args.model)
        finally:
            driver.quit()
            server.stop()
    write_atomically(args.out, lambda f: f.write(png))
    print(f"{args.out}: {len(png)} bytes")
    return 0


def _shoot(driver, url: str, model: str) -> bytes:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    _wait(driver, "return !document.querySelector('#model').disabled")
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    driver.find_element(By.CSS_SELECTOR, f".example[data-src$='{EXAMPLE}']").click()
    _wait(driver, "return document.querySelectorAll('.card').length === 1")
    driver.find_element(By.ID, "files").send_keys(str(photos.folder() / PHOTO))
    _wait(driver, "const c = [...document.querySelectorAll('.card')];"
                  "return c.length === 2 && c.every((x) => x.dataset.state === 'done')")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    clip = {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}  # the whole page, not the window
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", options)
    return base64.b64decode(shot["data"])


def _wait(driver, script: str) -> None:
    deadline = time.monotonic() + browser.WAIT_S
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page never satisfied {script!r}:\n{browser.console(driver)}")
        time.sleep(0.05)


if __name__ == "__main__":
    raise SystemExit(main())
