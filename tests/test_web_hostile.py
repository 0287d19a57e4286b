"""The review web app against a hostile user (/tmp/findings-web.md): each bad input gets one line and a
4xx, never a 500 or a traceback; what is shown is right (pictures, numbers, links, counts); the undo
keeps the history; `obsarch serve` says in one line why it cannot start. On SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
import html
import re
import socket
import warnings

import numpy as np
import pytest
from factories import write_image
from markupsafe import escape
from sqlalchemy import text
from test_web import NIGHT, cli, client, runner
from test_web_browser import browser, server  # noqa: F401  fixtures of the browser test (finding 8)

from archive.catalog import Catalog
from archive.exceptions import ObsarchError
from cli.main import app as cli_app
from cli.render import readable
from processing import quality

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)

from web import app as web_app  # noqa: E402
from web import thumbnails  # noqa: E402
from web.app import create_app  # noqa: E402

FRAME_NIGHT = "2017-08-15"  # 03:xx UTC on the 16th is the night of the 15th


def write_frames(directory, count=3, extra=lambda i: {}):
    """``count`` small frames a minute and a tenth of an RA second apart (4 significant digits cannot tell them apart)."""
    rng = np.random.default_rng(7)
    for i in range(count):
        write_image(directory / f"f{i}.fits", rng.normal(1000.0, 10.0, (32, 32)).astype(np.float32),
                    {"DATE-OBS": f"2017-08-16T03:0{i}:00", "RA": f"10:35:50.{i}", **extra(i)})


@pytest.fixture
def frames(catalog, tmp_path):
    write_frames(tmp_path / "frames")
    catalog.ingest([tmp_path / "frames"])
    return catalog


def one_line(answer) -> str:
    """The message of a refusal: the plain-text line, or the message of the error page."""
    if answer.headers["content-type"].startswith("text/html"):
        found = re.search(r"<main>(.*?)</main>", answer.text, re.S) or re.search(r"<p[^>]*>(.*?)</p>", answer.text, re.S)
        return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()
    lines = answer.text.strip().splitlines()
    assert len(lines) == 1, answer.text
    return lines[0]


def serve(url, *args):
    return runner.invoke(cli_app, ["--db", url, "serve", *args])


@pytest.fixture
def no_serving(monkeypatch):
    """`obsarch serve` gets as far as serving, then returns at once (a test must never hang on a server)."""
    import uvicorn

    served = []

    def run(self, sockets=None):
        served.append(sockets)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(a))
    return served


# -- 1. a picture is tied to the file it shows ----------------------------------------------


def _made_again(catalog, backend, url, tmp_path) -> Catalog:
    """The catalog removed and made again at the same URL: ids start again at 1."""
    if backend == "sqlite":
        catalog.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"catalog.db{suffix}").unlink(missing_ok=True)
    else:
        with catalog.engine.begin() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        catalog.engine.dispose()
    return Catalog.create(url)


def test_a_catalog_made_again_never_shows_the_old_catalogs_pictures(catalog, backend, url, tmp_path):
    write_image(tmp_path / "A" / "a.fits", np.zeros((32, 32), dtype=np.float32) + np.arange(32, dtype=np.float32))
    write_image(tmp_path / "B" / "b.fits", np.zeros((32, 32), dtype=np.float32) + np.arange(32, dtype=np.float32)[:, None])
    catalog.ingest([tmp_path / "A"])
    first_id = catalog.exposure_ids("relpath == 'a.fits'")[0]
    with client(catalog, tmp_path) as http:
        old = [http.get(f"/exposures/{first_id}/{name}").content for name in ("thumbnail.png", "preview.png")]
    again = _made_again(catalog, backend, url, tmp_path)
    try:
        again.ingest([tmp_path / "B"])
        second_id = again.exposure_ids("relpath == 'b.fits'")[0]
        assert second_id == first_id  # the same id, another file
        with client(again, tmp_path) as http:
            new = [http.get(f"/exposures/{second_id}/{name}").content for name in ("thumbnail.png", "preview.png")]
        with TestClientFresh(again, tmp_path / "fresh") as http:
            fresh = [http.get(f"/exposures/{second_id}/{name}").content for name in ("thumbnail.png", "preview.png")]
    finally:
        again.engine.dispose()
    assert new == fresh and new[0] != old[0] and new[1] != old[1]


def TestClientFresh(catalog, directory):  # noqa: N802  a client over a cache of its own
    from starlette.testclient import TestClient

    return TestClient(create_app(catalog=catalog, thumbnails=directory))


# -- 2. the undo keeps the history ------------------------------------------------------------


def test_undo_takes_back_only_flags_this_server_just_made(frames, tmp_path, monkeypatch):
    exposure_id = frames.exposure_ids("relpath == 'f0.fits'")[0]
    cli(frames, "flag", "set", f"id == {exposure_id}", "--grade", "bad", "--reason", "focus", "--note", "from the CLI")
    by_cli = quality.flag_history(frames.engine, exposure_id)[-1]["id"]
    assert quality.flag_history(frames.engine, exposure_id)[-1]["who"] == getpass.getuser()
    with client(frames, tmp_path, allow_write=True) as http:
        refused = http.post("/flags/retract", data={"ids": str(by_cli)})
        made = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "ok"}).json()["flag_ids"]
    with client(frames, tmp_path, allow_write=True) as http:  # another run of the server: it made none of them
        after_restart = http.post("/flags/retract", data={"ids": ",".join(map(str, made))})
        monkeypatch.setattr(web_app, "UNDO_WINDOW_S", 0)  # the undo's window has passed
        late = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "great"}).json()["flag_ids"]
        too_late = http.post("/flags/retract", data={"ids": ",".join(map(str, late))})
        monkeypatch.setattr(web_app, "UNDO_WINDOW_S", 900)
        slip = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "marginal"}).json()["flag_ids"]
        undone = http.post("/flags/retract", data={"ids": ",".join(map(str, slip))})
    for answer in (refused, after_restart, too_late):
        assert answer.status_code == 403 and "an undo takes back only flags made through this server" in one_line(answer)
    # the frame's grade now: 'great', the flag made after the window passed, is current again
    assert undone.status_code == 200
    assert undone.json() == {"retracted": 1, "current": {str(exposure_id): {"grade": "great", "reason": None, "source": "person"}}}
    assert [f["id"] for f in quality.flag_history(frames.engine, exposure_id) if f["source"] == "person"] == [by_cli, *made, *late]


# -- 3. numbers as the CLI shows them ------------------------------------------------------


def test_tables_show_floats_as_the_cli_does(frames, tmp_path):
    rows = frames.query(None, columns="id,mjd,ra,dec", sort="id")
    with client(frames, tmp_path) as http:
        page = http.get("/exposures", params={"columns": "id,mjd,ra,dec", "sort": "id"}).text
        frame_page = http.get(f"/exposures/{rows['id'][0]}").text
    shown = re.findall(r"<tr><td><a [^>]*>\d+</a></td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert shown == [(readable(r.mjd), readable(r.ra), readable(r.dec)) for r in rows.itertuples()]
    assert len({mjd for mjd, _, _ in shown}) == len({ra for _, ra, _ in shown}) == 3  # different values look different
    assert f"<b>ra</b> {readable(rows['ra'][0])}</span>" in frame_page


# -- 4. group links -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a<b & c's", 'é "x"', "Flüsse <1>", "back\\slash '' end\\"])
def test_a_group_link_lists_the_groups_members_whatever_its_name(frames, tmp_path, name):
    exposure_id = frames.exposure_ids("relpath == 'f1.fits'")[0]
    cli(frames, "group", "create", name, f"id == {exposure_id}")
    with client(frames, tmp_path) as http:
        page = http.get(f"/exposures/{exposure_id}").text
        links = [html.unescape(h) for h in re.findall(r'<li><a href="(/exposures\?q=[^"]*)">', page)]
        assert len(links) == 1
        members = http.get(links[0])
    assert members.status_code == 200 and re.search(r'<p class="count">1 exposure\s', members.text)
    assert f'<a href="/exposures/{exposure_id}">' in members.text


# -- 5. one line and a 4xx, never a 500 ---------------------------------------------------------

BIG = "99999999999999999999"
MID = str(2**31)  # beyond the id columns, within 64 bits: PostgreSQL refused the parameter with a 500 (a user trial)


@pytest.mark.parametrize("method, path, form, status, message", [
    ("GET", "/exposures/99999/headers", None, 404, "no exposure with id 99999"),
    ("GET", f"/exposures/{BIG}", None, 404, f"no exposure with id {BIG}"),
    ("GET", f"/exposures/{BIG}/thumbnail.png", None, 404, f"no exposure with id {BIG}"),
    ("GET", f"/exposures/{BIG}/preview.png", None, 404, f"no exposure with id {BIG}"),
    ("GET", f"/exposures/{BIG}/headers", None, 404, f"no exposure with id {BIG}"),
    ("GET", f"/exposures?limit={BIG}", None, 400, f"limit: '{BIG}' does not fit in 64 bits"),
    ("GET", f"/exposures.csv?limit={BIG}", None, 400, f"limit: '{BIG}' does not fit in 64 bits"),
    ("GET", "/exposures?limit=-1", None, 400, "limit: -1 is below 0"),
    ("GET", "/exposures.csv?limit=-5", None, 400, "limit: -5 is below 0"),
    ("GET", "/exposures.json?limit=ten", None, 400, "limit: 'ten' is not an integer"),
    ("GET", f"/thumbnails/state?ids={BIG}", None, 400, f"ids: '{BIG}' is beyond every id (2147483647 is the largest): no exposure has it"),
    ("GET", f"/thumbnails/state?ids=1,{MID}", None, 400, f"ids: '{MID}' is beyond every id (2147483647 is the largest): no exposure has it"),
    ("GET", f"/exposures/{MID}", None, 404, f"no exposure with id {MID}"),
    ("GET", f"/exposures/{MID}/headers", None, 404, f"no exposure with id {MID}"),
    ("GET", f"/exposures/{MID}/thumbnail.png", None, 404, f"no exposure with id {MID}"),
    ("GET", f"/processing/runs/{MID}", None, 404, f"no run with id {MID}"),
    ("POST", f"/exposures/{MID}/flags", {"grade": "ok"}, 404, f"no exposure with id {MID}"),
    ("POST", "/flags/retract", {"ids": MID}, 400, f"ids: '{MID}' is beyond every id (2147483647 is the largest): no flag has it"),
    ("GET", f"/processing?limit={BIG}", None, 400, f"limit: '{BIG}' does not fit in 64 bits"),
    ("GET", f"/processing/runs/{BIG}", None, 404, f"no run with id {BIG}"),
    ("GET", "/exposures/{id}/preview.png?hdu=%C2%B2", None, 400, "hdu '²': give an HDU index (0, 1, ...)"),
    ("GET", f"/nights/{FRAME_NIGHT}?band=%00", None, 400, "band: contains a NUL byte"),
    ("GET", "/nights/2017%00", None, 400, "the path: contains a NUL byte"),
    # Starlette read a byte that is no UTF-8 as U+FFFD: the search found nothing where obsarch query refuses it
    ("GET", "/exposures.csv?q=object+%3D%3D+%27%FF%27", None, 400, "q: not valid UTF-8"),
    ("GET", "/exposures?q=%FF%FE", None, 400, "q: not valid UTF-8"),
    ("GET", "/exposures?columns=id&%FF=1", None, 400, "a parameter's name: not valid UTF-8"),
    ("GET", "/nights/2017-08-16?band=%C3", None, 400, "band: not valid UTF-8"),
    ("GET", "/nights/%FF", None, 400, "the path: not valid UTF-8"),
    ("POST", f"/exposures/{BIG}/flags", {"grade": "ok"}, 404, f"no exposure with id {BIG}"),
    ("POST", "/flags/retract", {"ids": BIG}, 400, f"ids: '{BIG}' is beyond every id (2147483647 is the largest): no flag has it"),
])
def test_bad_ids_and_limits_get_one_line_and_a_4xx(frames, tmp_path, method, path, form, status, message):
    path = path.replace("{id}", str(frames.exposure_ids("relpath == 'f0.fits'")[0]))
    with client(frames, tmp_path, allow_write=True) as http:
        answer = http.request(method, path, data=form) if form else http.request(method, path)
    assert answer.status_code == status, answer.text
    assert one_line(answer).startswith(message)


# -- 6. the thumbnail cache at start-up and in its worker ----------------------------------------


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_serve_refuses_a_thumbnail_worker_count_below_one(catalog, no_serving, workers):
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--thumbnail-workers", workers)
    assert result.exit_code == 2 and not no_serving
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: invalid value for '--thumbnail-workers': {workers} is below 1")


def test_serve_refuses_a_thumbnail_directory_it_cannot_write(catalog, tmp_path, no_serving):
    (tmp_path / "a-file").write_text("not a directory")
    bad = tmp_path / "a-file" / "thumbs"
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--thumbnails", str(bad), "--port", "0")
    assert result.exit_code == 1 and not no_serving
    assert result.stderr.strip().splitlines() == [f"error: thumbnail directory {bad}: cannot write there (Not a directory)"]
    assert "serve: http" not in result.stdout
    with pytest.raises(ObsarchError, match="cannot write there"):
        create_app(catalog=catalog, thumbnails=bad)


def test_a_thumbnail_worker_that_cannot_write_marks_the_item_failed_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(thumbnails, "picture", lambda path, size: np.zeros((4, 4)))
    cache = thumbnails.ThumbnailCache(tmp_path / "thumbs")
    try:
        (tmp_path / "thumbs").write_text("the directory went away")
        state, reason = cache.wait(thumbnails.Item(1, 1, "one.fits"), 10)
        assert state == "failed" and reason.startswith(f"cannot write the thumbnail in {tmp_path / 'thumbs'}")
        assert cache.wait(thumbnails.Item(2, 1, "two.fits"), 10)[0] == "failed"  # the worker is still there
    finally:
        cache.close()


# -- 7. `obsarch serve` exit codes ---------------------------------------------------------------


@pytest.fixture
def port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_serve_on_a_port_in_use_says_so_in_one_line_without_a_banner(catalog, tmp_path, port_in_use, no_serving):
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--port", str(port_in_use),
                   "--thumbnails", str(tmp_path / "t"))
    assert result.exit_code == 1 and not no_serving and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: cannot serve on 127.0.0.1:{port_in_use}: Address already in use"]


@pytest.mark.parametrize("host, message", [
    ("nosuch.invalid", "error: cannot serve on nosuch.invalid: the host name does not resolve"),
    ("10.255.255.1", "error: cannot serve on 10.255.255.1:8765: Cannot assign requested address"),
])
def test_serve_on_a_host_it_cannot_listen_on_says_so_in_one_line(catalog, tmp_path, no_serving, host, message):
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--host", host, "--token", "s3cret",
                   "--thumbnails", str(tmp_path / "t"))
    assert result.exit_code == 1 and not no_serving and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range_as_a_usage_error(catalog, no_serving, port):
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--port", port)
    assert result.exit_code == 2 and not no_serving
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid value for '--port'" in result.stderr


def test_serve_prints_its_banner_once_the_port_is_bound(catalog, tmp_path, no_serving):
    result = serve(catalog.engine.url.render_as_string(hide_password=False), "--port", "0", "--thumbnails", str(tmp_path / "t"))
    assert result.exit_code == 0, result.stderr
    (sockets,) = no_serving
    bound = sockets[0].getsockname()[1]
    sockets[0].close()
    assert bound != 0 and result.stdout.startswith(f"obsarch serve: http://127.0.0.1:{bound}/ on ")


# -- 9. sorting by a header keyword with + or & ------------------------------------------------


def test_sorting_by_a_header_column_with_plus_or_ampersand_sorts_by_it(catalog, tmp_path):
    write_frames(tmp_path / "amp", extra=lambda i: {"HIERARCH A+B": [3, 1, 2][i], "HIERARCH X&Y": [3, 1, 2][i]})
    catalog.ingest([tmp_path / "amp"])
    with client(catalog, tmp_path) as http:
        for keyword in ("A+B", "X&Y"):
            column = f"hdr['{keyword}']"
            page = http.get("/exposures", params={"columns": f"id,{column}", "sort": "id"}).text
            header = re.search(r'<th><a href="([^"]*)">' + re.escape(str(escape(column))), page)
            sorted_page = http.get(html.unescape(header.group(1)))
            assert sorted_page.status_code == 200, sorted_page.text
            values = re.findall(r"<tr><td><a [^>]*>\d+</a></td><td>([^<]*)</td></tr>", sorted_page.text)
            assert values == ["1", "2", "3"] and f"{escape(column)} ▲" in sorted_page.text


# -- 10. the count ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit, count", [
    (2, "2 exposures (the first 2: more match)"),
    (3, "3 exposures ·"),
    (4, "3 exposures ·"),
])
def test_the_count_says_more_match_only_when_more_do(frames, tmp_path, limit, count):
    with client(frames, tmp_path) as http:
        page = http.get("/exposures", params={"limit": limit}).text
    assert " ".join(re.search(r'<p class="count">([^<]*)', page).group(1).split()).startswith(count)


# -- 11. form data is stored as sent, or refused -----------------------------------------------------


@pytest.mark.parametrize("body, message", [
    (b"grade=ok&note=%FF%FE", "note: not valid UTF-8"),
    (b"grade=ok&note=\xff\xfe", "note: not valid UTF-8"),
    (b"grade=ok&note=a%00b", "note: contains a NUL byte"),
])
def test_a_note_that_is_not_utf8_or_holds_a_nul_is_refused(frames, tmp_path, body, message):
    exposure_id = frames.exposure_ids("relpath == 'f0.fits'")[0]
    with client(frames, tmp_path, allow_write=True) as http:
        answer = http.post(f"/exposures/{exposure_id}/flags", content=body,
                           headers={"content-type": "application/x-www-form-urlencoded"})
        kept = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "ok", "note": "Flüsse ✓"})
    assert answer.status_code == 400 and one_line(answer).startswith(message)
    assert kept.status_code == 201
    assert [f["note"] for f in quality.flag_history(frames.engine, exposure_id)] == ["Flüsse ✓"]


# -- 8. the night view's keys on an ungraded frame (a real browser) ------------------------------------


@pytest.mark.slow
def test_the_night_view_never_posts_or_shows_ungraded_as_a_grade(server, browser):  # noqa: F811
    from test_web_browser import _card, _press, _wait

    base, catalog = server
    browser.get(f"{base}/nights/{NIGHT}?band=V")
    cards = browser.find_elements("css selector", ".card")
    ungraded = next(c for c in cards if c.find_element("css selector", ".grade-text").text == "ungraded")
    by_rule = next(c for c in cards if c.find_element("css selector", ".source").text == "rule")
    first = int(ungraded.get_attribute("data-id"))
    assert ungraded.get_attribute("data-grade") == ""

    ungraded.click()
    _press(browser, "r")
    _wait(browser, lambda b: "grade the frame first" in b.find_element("id", "status").text)
    assert not browser.find_element("id", "annotate").is_displayed()
    _press(browser, "n")
    assert not browser.find_element("id", "annotate").is_displayed()
    _press(browser, "1")
    _wait(browser, lambda b: _card(b, first).find_element("css selector", ".grade-text").text == "great")
    assert _card(browser, first).find_element("css selector", ".source").text == "person"
    _press(browser, "u")
    _wait(browser, lambda b: "undone" in b.find_element("id", "status").text)
    card = _card(browser, first)
    assert card.find_element("css selector", ".grade").text.split() == ["ungraded"]
    assert "grade-none" in card.get_attribute("class") and card.get_attribute("data-grade") == ""

    rule_id, rule_grade = int(by_rule.get_attribute("data-id")), by_rule.get_attribute("data-grade")
    by_rule.click()
    _press(browser, "4" if rule_grade != "bad" else "1")
    _wait(browser, lambda b: _card(b, rule_id).find_element("css selector", ".source").text == "person")
    _press(browser, "u")
    _wait(browser, lambda b: _card(b, rule_id).find_element("css selector", ".source").text == "rule")
    assert _card(browser, rule_id).get_attribute("data-grade") == rule_grade
    assert [f for f in quality.flag_history(catalog.engine, first) if f["source"] == "person"] == []


def test_serve_listens_on_ipv4_when_a_host_name_resolves_to_both(monkeypatch):
    """A localhost that lists ::1 first (Fedora, macOS) must still answer on 127.0.0.1, as uvicorn did."""
    import socket

    import cli.web as web_cli

    def both(host, port, **_):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(web_cli.socket, "getaddrinfo", both)
    listening = web_cli.listen("localhost", 0)
    try:
        assert listening.family == socket.AF_INET and listening.getsockname()[0] == "127.0.0.1"
    finally:
        listening.close()
