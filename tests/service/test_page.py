"""The page at `/`, in a real headless Chromium against a real resnet-serve: a person picks, drops,
pastes or clicks images and sees the same top-5, model and cascade path that /classify answers,
and the service's own message when it refuses. Without a browser those tests skip (conftest.browser)."""

from __future__ import annotations

import base64
import re
import time
import tomllib
from pathlib import Path

import httpx
from litestar.testing import TestClient

from bench import photos

from bench.page import browser as chromium
from service.web import page
from service.api.app import create_app
from service.config import ServeConfig
from service.engine.runtime import load_models

PHOTO = photos.path("motorcycle_right.png")  # a real photo, posted by the page as the person's file
ROCKET = photos.folder() / "rocket.jpg"  # another, that the tiny test models' auto escalates (not relied on)


def classify(server, data: bytes, content_type: str, **params) -> httpx.Response:
    """What a client gets from /classify for the same bytes: what the page must show."""
    return httpx.post(
        server.url + "/classify", content=data, headers={"Content-Type": content_type}, params=params, timeout=30
    )


def wait(driver, condition, what: str):
    """condition(driver) once truthy; fails with what was awaited and the page's console."""
    deadline = time.monotonic() + chromium.WAIT_S
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"the page never showed {what}\nconsole:\n{chromium.console(driver)}")


def card_state(driver, name: str) -> dict | None:
    """What the card of file `name` shows, once it is no longer busy; None while it is."""
    return driver.execute_script(
        """
        const card = [...document.querySelectorAll(".card")].find((c) => c.dataset.name === arguments[0]);
        if (!card || card.dataset.state === "busy") return null;
        const path = card.querySelector(".path");
        return {
          state: card.dataset.state,
          model: card.querySelector(".model").textContent,
          time: card.querySelector(".time").textContent,
          bars: [...card.querySelectorAll(".bar")].map((b) => ({
            label: b.querySelector(".label").textContent, percent: b.querySelector(".pct").textContent,
            data_label: b.dataset.label, probability: Number(b.dataset.probability),
          })),
          path: path.hidden ? null : path.dataset.path,
          error: card.querySelector(".error").hidden ? null
            : card.querySelector(".error").firstChild.textContent + (card.querySelector(".error .code")?.textContent || ""),
        };
        """,
        name,
    )


def settled(driver, name: str, model: str | None = None) -> dict:
    """The card of `name` once answered (by `model`, if given) or refused."""

    def ready(d):
        state = card_state(d, name)
        return state if state and (model is None or state["model"] == model or state["error"]) else None

    return wait(driver, ready, f"an answer for {name}" + (f" from {model}" if model else ""))


def assert_shows(state: dict, answer: dict) -> None:
    """The card shows the answer: its model, and five bars whose labels and percentages are its top-5."""
    assert state["state"] == "done" and state["error"] is None, state
    assert state["model"] == answer["model"]
    assert re.fullmatch(r"answered in \d+ ms", state["time"]), state["time"]
    predictions = answer["predictions"]
    assert len(state["bars"]) == len(predictions) == 5
    for bar, prediction in zip(state["bars"], predictions):
        assert bar["label"] == bar["data_label"] == prediction["label"]
        assert bar["probability"] == prediction["probability"]
        assert bar["percent"] == f"{prediction['probability'] * 100:.1f}%"


def choose(driver, model: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "model")).select_by_value(model)


def open_page(driver, server) -> None:
    driver.get(server.url + "/")
    wait(driver, lambda d: d.execute_script("return !document.querySelector('#model').disabled"), "the model list")
    driver.execute_script("document.querySelector('#clear').click()")


def test_a_photo_is_answered_by_each_model_and_by_auto_as_classify_answers_it(browser, server):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    options = browser.execute_script("return [...document.querySelectorAll('#model option')].map((o) => o.value)")
    assert options == ["resnet18", "resnet20", "auto"]
    assert not browser.find_element(By.ID, "key-box").is_displayed()  # no keys: no key field
    assert browser.find_element(By.ID, "budget-box").get_attribute("hidden") is not None
    browser.find_element(By.ID, "files").send_keys(str(PHOTO))
    data = PHOTO.read_bytes()
    assert_shows(settled(browser, PHOTO.name), classify(server, data, "image/png").json())  # the default model

    choose(browser, "resnet20")  # the deeper model: the card asks again
    assert_shows(settled(browser, PHOTO.name, "resnet20"), classify(server, data, "image/png", model="resnet20").json())

    choose(browser, "auto")
    browser.find_element(By.ID, "files").send_keys(str(ROCKET))
    for path, kind in ((PHOTO, "image/png"), (ROCKET, "image/jpeg")):
        answer = classify(server, path.read_bytes(), kind, model="auto").json()
        state = wait(browser, lambda d: (s := card_state(d, path.name)) and s["path"] and s, "the cascade's path")
        assert_shows(state, answer)
        assert state["path"] == ",".join(answer["cascade"]["path"])
    assert browser.find_element(By.ID, "budget-box").get_attribute("hidden") is None  # auto's budget slider


def test_several_files_dropped_pasted_or_clicked_each_get_a_card(browser, server):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    choose(browser, "resnet18")
    others = [photos.path("color.png"), photos.path("coins.png")]
    browser.find_element(By.ID, "files").send_keys("\n".join(map(str, others)))  # two files at once
    for path in others:
        assert_shows(settled(browser, path.name), classify(server, path.read_bytes(), "image/png").json())
    # A drop and a paste, as the browser delivers them: events whose DataTransfer holds a File.
    coffee = httpx.get(server.url + "/ui/examples/coffee.jpg").content
    for event in ("drop", "paste"):
        browser.execute_script(
            """
            const [event, b64, name] = arguments;
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const target = event === "drop" ? document.querySelector("#drop") : document;
            target.dispatchEvent(event === "drop"
              ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
              : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
            """,
            event, base64.b64encode(coffee).decode(), f"{event}ped.jpg",
        )  # fmt: skip
        assert_shows(settled(browser, f"{event}ped.jpg"), classify(server, coffee, "image/jpeg").json())
    browser.find_element(By.CSS_SELECTOR, ".example[data-src$='ring.png']").click()
    ring = httpx.get(server.url + "/ui/examples/ring.png").content
    assert_shows(settled(browser, "ring.png"), classify(server, ring, "image/png").json())
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == 5
    console = chromium.console(browser)  # no script error, nothing the page's Content-Security-Policy blocked
    assert "Uncaught" not in console and "Content Security Policy" not in console, console


def test_a_file_that_is_no_image_shows_the_services_own_message(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a photo\n")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    state = settled(browser, "notes.txt")
    refused = classify(server, notes.read_bytes(), "text/plain").json()["error"]
    assert state["state"] == "error" and state["bars"] == []
    assert state["error"] == f"{refused['message']} (415 unsupported_media_type)"


def test_the_page_and_its_files_are_served_and_left_out_of_the_api_schema(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from another origin
    for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        assert httpx.get(server.url + asset).status_code == 200, asset
    missing = httpx.get(server.url + "/ui/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    paths = httpx.get(server.url + "/schema/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/ui") for path in paths)


def test_no_ui_turns_the_page_off(models_dir):
    config = ServeConfig(models=models_dir, providers=("cpu",), intra_op_threads=1, decode_threads=1, ui=False)
    with TestClient(create_app(config, load_models(config))) as client:
        for path in ("/", "/ui/page.js"):
            response = client.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
        assert client.get("/models").status_code == 200



def test_every_file_of_the_page_ships_as_package_data():
    """The container images install the project non-editable: a file not in package-data is not served there."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service.web"]
    package = root / "service" / "web"
    shipped = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    assert shipped == {path for path in (package / "static").rglob("*") if path.is_file()}
    assert set(page.static_files()) == {str(path.relative_to(package / "static")) for path in shipped}


def test_with_keys_the_page_asks_for_one_and_sends_it(browser, models_dir, tmp_path):
    from selenium.webdriver.common.by import By

    from .conftest import start_server

    keys = tmp_path / "keys"
    keys.write_text("page-user page-user-key-0123456789\n")
    keys.chmod(0o600)
    (tmp_path / "log").mkdir()
    server = start_server(models_dir, tmp_path / "log", "--providers", "cpu", "--api-keys-file", str(keys))
    try:
        browser.get(server.url + "/")  # the page and its files are open; /models is not
        wait(browser, lambda d: d.execute_script("return !document.querySelector('#key-box').hidden"), "the key field")
        assert "needs an API key" in browser.find_element(By.ID, "service-error").text  # the service's own words
        browser.find_element(By.ID, "api-key").send_keys("page-user-key-0123456789")
        browser.find_element(By.ID, "key-use").click()
        wait(browser, lambda d: d.execute_script("return !document.querySelector('#model').disabled"), "the model list")
        browser.find_element(By.ID, "files").send_keys(str(PHOTO))
        answer = httpx.post(server.url + "/classify", content=PHOTO.read_bytes(), timeout=30,
                            headers={"Content-Type": "image/png", "Authorization": "Bearer page-user-key-0123456789"})  # fmt: skip
        assert_shows(settled(browser, PHOTO.name), answer.json())
    finally:
        browser.execute_script("sessionStorage.clear()")
        server.stop()


def test_an_answer_below_its_calibrated_confidence_is_marked_not_sure(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from .colour_models import AMBIGUOUS, CLEAR, png, write_cascade_file, write_ladder
    from .conftest import start_server

    folder = write_ladder(tmp_path / "models")
    write_cascade_file(folder, abstain={"resnet18": {"threshold": 0.9, "target_risk": 0.05}})
    (tmp_path / "log").mkdir()
    server = start_server(folder, tmp_path / "log", "--providers", "cpu")
    try:
        open_page(browser, server)
        choose(browser, "resnet18")
        for name, colour in (("unsure.png", AMBIGUOUS[1]), ("sure.png", CLEAR[1])):
            (tmp_path / name).write_bytes(png(colour))
            browser.find_element(By.ID, "files").send_keys(str(tmp_path / name))
            settled(browser, name)
        marks = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('.card')].map((c) => "
            "[c.dataset.name, c.querySelector('.abstained').hidden ? null : c.querySelector('.abstained').textContent]))"
        )
        assert marks["sure.png"] is None
        assert marks["unsure.png"].startswith("Not sure: confidence") and "0.9000" in marks["unsure.png"]
    finally:
        server.stop()


def test_the_top_prediction_shows_where_the_model_looked(browser, server):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    choose(browser, "resnet20")  # the CIFAR net keeps an 8x8 map at 32 px
    browser.find_element(By.ID, "files").send_keys(str(PHOTO))
    settled(browser, PHOTO.name, "resnet20")
    heat = browser.execute_script(
        "const c = [...document.querySelectorAll('.card')].find((c) => c.dataset.name === arguments[0]);"
        "const h = c.querySelector('.heat'); return {hidden: h.hidden, src: h.querySelector('img').src,"
        "caption: h.querySelector('figcaption').textContent};", PHOTO.name,
    )  # fmt: skip
    assert not heat["hidden"] and heat["src"].startswith("data:image/png;base64,")
    assert heat["caption"].startswith("where resnet20 saw")
