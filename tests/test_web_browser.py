"""The review app in a real browser (headless Chromium through selenium), on
SQLite and PostgreSQL: grade frames from the keyboard, reload, and find the
flags in the catalog and in `obsarch flags history`; no console errors.

A screenshot of each page is saved under ``$OBSARCH_ARTIFACTS`` (else the
test's tmp_path) as ``web-<backend>-<page>.png``.
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from factories import missing
from typer.testing import CliRunner

from cli.demo import make_small_night as make_night
from cli.main import app as cli_app
from processing import quality

NIGHT = "2017-08-15"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--window-size=1400,1000")


def _chromium() -> tuple[str, str]:
    binary = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                   if p and Path(p).exists()), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not (binary and driver):
        missing("the browser tests need Debian's chromium and chromium-driver")
    return binary, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(catalog, tmp_path):
    """The demo night, measured, served with grading allowed on a free local port."""
    with _serving(catalog, tmp_path) as served:
        yield served


@contextlib.contextmanager
def _serving(catalog, tmp_path):
    import uvicorn

    from web.app import create_app

    make_night(tmp_path / "night")
    catalog.ingest([tmp_path / "night"])
    quality.compute(catalog.engine, "frame_type == 'science'", workers=1)
    quality.apply_rules(catalog.engine)
    port = _free_port()
    app = create_app(catalog=catalog, allow_write=True, thumbnails=tmp_path / "thumbs",
                     allowed_hosts=["127.0.0.1", "localhost"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", catalog
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture
def artifacts(tmp_path, backend) -> callable:
    directory = Path(os.environ.get("OBSARCH_ARTIFACTS") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)

    def shoot(browser, page: str) -> Path:
        path = directory / f"web-{backend}-{page}.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
        return path

    return shoot


def _wait(browser, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda b: condition(b))


def _press(browser, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(keys).perform()


def _card(browser, exposure_id: int):
    return browser.find_element("id", f"exposure-{exposure_id}")


def _grade_shown(browser, exposure_id: int, grade: str) -> None:
    _wait(browser, lambda b: _card(b, exposure_id).get_attribute("data-grade") == grade)


def _console_errors(browser) -> list:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_grade_three_frames_from_the_keyboard_and_find_them_after_a_reload(server, browser, artifacts):
    base, catalog = server
    browser.get(f"{base}/nights/{NIGHT}?band=V")
    _wait(browser, lambda b: not b.find_elements("css selector", "[data-pending]"), 90)  # thumbnails arrived
    cards = [int(c.get_attribute("data-id")) for c in browser.find_elements("css selector", ".card")]
    assert len(cards) == 7
    untouched = _card(browser, cards[2]).get_attribute("data-grade")  # the rules' grade, or none for a flat
    # the last pictures may still be decoding when the pending marks go: wait for them, then none may be broken
    _wait(browser, lambda b: b.execute_script("return Array.from(document.images).every(i => i.complete)"))
    assert browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth === 0).length") == 0

    _press(browser, "1")
    _grade_shown(browser, cards[0], "great")
    _press(browser, "j4")
    _grade_shown(browser, cards[1], "bad")
    _press(browser, "r")
    _wait(browser, lambda b: b.find_element("id", "annotate").is_displayed())
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#annotate select")).select_by_visible_text("tracking")
    browser.find_element("css selector", "#annotate input[name=note]").send_keys("big tracking errors\n")
    _wait(browser, lambda b: _card(b, cards[1]).get_attribute("data-reason") == "tracking")
    _press(browser, "jj3")
    _grade_shown(browser, cards[3], "marginal")
    _press(browser, "2")
    _grade_shown(browser, cards[3], "ok")
    _press(browser, "u")  # the 'ok' was a slip
    _grade_shown(browser, cards[3], "marginal")
    artifacts(browser, "night")

    browser.refresh()
    _wait(browser, lambda b: b.find_elements("css selector", ".card"))
    shown = {i: _card(browser, i).get_attribute("data-grade") for i in cards[:4]}
    assert shown == {cards[0]: "great", cards[1]: "bad", cards[2]: untouched, cards[3]: "marginal"}

    people = {i: [f for f in quality.flag_history(catalog.engine, i) if f["source"] == "person"] for i in cards[:4]}
    assert [f["grade"] for f in people[cards[0]]] == ["great"]
    assert [(f["grade"], f["reason"], f["note"]) for f in people[cards[1]]] == [
        ("bad", "manual", None), ("bad", "tracking", "big tracking errors")]
    assert [f["grade"] for f in people[cards[3]]] == ["marginal"]  # the undone 'ok' is gone
    assert people[cards[2]] == []
    assert {f["who"] for flags in people.values() for f in flags} == {getpass.getuser()}

    url = catalog.engine.url.render_as_string(hide_password=False)
    history = CliRunner().invoke(cli_app, ["--db", url, "flags", "history", str(cards[1]), "--id", "--format", "csv"])
    assert history.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(history.stdout)))
    assert {k: rows[-1][k] for k in ("grade", "reason", "source", "note", "current")} == {
        "grade": "bad", "reason": "tracking", "source": "person", "note": "big tracking errors", "current": "True"}
    assert _console_errors(browser) == []


@pytest.mark.slow
def test_the_night_view_is_browsable_while_its_thumbnails_arrive(catalog, tmp_path, browser, artifacts, monkeypatch):
    """No thumbnail made yet (the worker is held): the whole night is on the page with a
    placeholder per frame and the progress; frames can be moved through and graded; the
    pictures then replace the placeholders in place, without a reload."""
    from web import thumbnails

    held = threading.Event()
    make = thumbnails.picture

    def picture_when_released(*args, **kwargs):
        held.wait(120)
        return make(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "picture", picture_when_released)
    try:
        with _serving(catalog, tmp_path) as (base, _):
            browser.get(f"{base}/nights/{NIGHT}")
            cards = [int(c.get_attribute("data-id")) for c in browser.find_elements("css selector", ".card")]
            assert len(cards) == len(catalog.exposure_ids(f"night == '{NIGHT}'")) > 7
            assert len(browser.find_elements("css selector", "[data-pending]")) == len(cards)
            assert f"thumbnails 0/{len(cards)}" in browser.find_element("id", "progress").text
            from selenium.webdriver.common.keys import Keys

            _press(browser, "j" + Keys.ARROW_RIGHT + "2")
            _grade_shown(browser, cards[2], "ok")
            assert browser.find_elements("css selector", ".card.cursor")[0].get_attribute("data-id") == str(cards[2])
            _press(browser, "n")  # a note on the grade just given: it keeps the frame's reason (none for 'ok')
            _wait(browser, lambda b: b.switch_to.active_element.get_attribute("name") == "note")
            browser.switch_to.active_element.send_keys("satellite trail\n")
            _wait(browser, lambda b: [(f["grade"], f["reason"], f["note"]) for f in quality.flag_history(
                catalog.engine, cards[2]) if f["source"] == "person"] == [("ok", None, None), ("ok", None, "satellite trail")])
            artifacts(browser, "night-while-thumbnails-arrive")

            held.set()
            _wait(browser, lambda b: not b.find_elements("css selector", "[data-pending]"), 120)
            _wait(browser, lambda b: f"thumbnails {len(cards)}/{len(cards)}" in b.find_element("id", "progress").text, 30)
            _wait(browser, lambda b: b.execute_script("return Array.from(document.images).every(i => i.complete)"))
            assert len(browser.find_elements("css selector", ".card img")) == len(cards)
            assert browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth === 0).length") == 0
            assert _card(browser, cards[2]).get_attribute("data-grade") == "ok"  # the page was never reloaded
            assert _console_errors(browser) == []
    finally:
        held.set()


@pytest.mark.slow
def test_shift_click_grades_a_range_and_a_plot_point_selects_its_frame(server, browser, artifacts):
    base, catalog = server
    browser.get(f"{base}/nights/{NIGHT}?band=V")
    cards = browser.find_elements("css selector", ".card")
    ids = [int(c.get_attribute("data-id")) for c in cards]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    cards[3].click()
    ActionChains(browser).key_down(Keys.SHIFT).click(cards[6]).key_up(Keys.SHIFT).perform()
    assert len(browser.find_elements("css selector", ".card.selected")) == 4
    _press(browser, "4")
    for exposure_id in ids[3:7]:
        _grade_shown(browser, exposure_id, "bad")
    assert catalog.query("grade == 'bad' and band == 'V'", columns="id")["id"].tolist() == ids[3:7]

    cards[0].click()
    _press(browser, "JJ")  # shift-j extends the selection as shift-click does
    assert [int(c.get_attribute("data-id")) for c in browser.find_elements("css selector", ".card.selected")] == ids[:3]

    point = browser.find_element("css selector", f'svg.plot .point[data-id="{ids[4]}"]')
    ActionChains(browser).move_to_element(point).click().perform()
    assert [int(c.get_attribute("data-id")) for c in browser.find_elements("css selector", ".card.selected")] == [ids[4]]
    assert _console_errors(browser) == []


@pytest.mark.slow
def test_every_page_renders_without_console_errors(server, browser, artifacts):
    base, catalog = server
    exposure_id = catalog.resolve("3871")
    pages = {
        "nights": "/nights",
        "search": "/exposures?q=band+%3D%3D+%27V%27+and+fwhm+%3C+5&sort=-frame_number",
        "search-error": "/exposures?q=band+%3D%3D",
        "frame": f"/exposures/{exposure_id}",
        "processing": "/processing",
    }
    for name, path in pages.items():
        browser.get(base + path)
        _wait(browser, lambda b: b.execute_script("return document.readyState") == "complete")
        if name == "frame":
            _wait(browser, lambda b: b.execute_script("const i = document.getElementById('preview'); return i.complete && i.naturalWidth > 0"))
            browser.find_element("id", "zoom-in").click()
            assert browser.find_element("id", "zoom-level").text == "150%"
            browser.find_element("id", "header-filter").send_keys("EXPT")
            _wait(browser, lambda b: "DATE-OBS" not in b.find_element("id", "headers").text)
            assert "EXPTIME" in browser.find_element("id", "headers").text
        if name == "search-error":
            assert "at column 8" in browser.find_element("id", "selection-error").text
        artifacts(browser, name)
        errors = [e for e in _console_errors(browser) if not (name == "search-error" and "400" in e["message"])]
        assert errors == [], name

    browser.get(f"{base}/exposures")  # htmx answers the form in place, and the URL can be bookmarked
    box = browser.find_element("css selector", "#search input[name=q]")
    box.send_keys("frame_type == 'bias'\n")
    _wait(browser, lambda b: "5 exposures" in b.find_element("id", "results").text)
    assert "frame_type" in browser.current_url and "bias" in browser.current_url
