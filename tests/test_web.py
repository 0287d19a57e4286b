"""The review web app over HTTP (Starlette's TestClient), on SQLite and PostgreSQL:
search and its CSV/JSON, grading as `obsarch flag` records it, the security
rules, thumbnails, and every page."""

from __future__ import annotations

import getpass
import json
import re
import threading
import time
import warnings
from unittest.mock import patch

import numpy as np
import pytest
from factories import write_image
from typer.testing import CliRunner

from cli.demo import make_small_night as make_night
from cli.main import app as cli_app
from processing import quality

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
from starlette.testclient import TestClient  # noqa: E402

from web.app import create_app  # noqa: E402
from web.security import parse_tokens, token_name  # noqa: E402
from web.thumbnails import default_directory  # noqa: E402

runner = CliRunner()
NIGHT = "2017-08-15"  # the demo's frames were taken after midnight UTC of the 16th


@pytest.fixture
def night(catalog, tmp_path):
    """The demo night (bias, flats, science in B, V, R), measured and judged by the rules."""
    make_night(tmp_path / "night")
    catalog.ingest([tmp_path / "night"])
    quality.compute(catalog.engine, "frame_type == 'science'", workers=1)
    quality.apply_rules(catalog.engine)
    return catalog


def client(catalog, tmp_path, **options) -> TestClient:
    return TestClient(create_app(catalog=catalog, thumbnails=tmp_path / "thumbs", **options))


def cli(catalog, *args) -> str:
    result = runner.invoke(cli_app, ["--db", catalog.engine.url.render_as_string(hide_password=False), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


# -- search -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exposures_csv_and_json_are_what_obsarch_query_gives(night, tmp_path, fmt):
    selection = "band == 'V' and frame_type == 'science' and exptime >= 60"
    with client(night, tmp_path) as http:
        answer = http.get(f"/exposures.{fmt}", params={"q": selection, "columns": "frame_number,date_obs,exptime,fwhm,path"})
    assert answer.status_code == 200
    expected = cli(night, "query", selection, "--columns", "frame_number,date_obs,exptime,fwhm,path", "--format", fmt)
    assert answer.text.strip() == expected.strip()
    if fmt == "json":
        assert [row["frame_number"] for row in json.loads(answer.text)] == [3871, 3872, 3873]


def test_csv_has_every_row_as_the_cli_unless_a_limit_is_given(night, tmp_path):
    with client(night, tmp_path) as http:
        everything = http.get("/exposures.csv")
        some = http.get("/exposures.csv", params={"sort": "-frame_number", "limit": 2, "columns": "frame_number"})
    assert everything.text == cli(night, "query", "--format", "csv")
    assert some.text.split() == ["frame_number", "3877", "3876"]


def test_search_table_tells_a_nan_from_a_missing_value(night, tmp_path):
    """As obsarch query does: a NULL is a blank cell, a NaN (PostgreSQL stores one; SQLite stores it
    as NULL) reads nan. The table showed both blank."""
    from sqlalchemy import update

    from archive.models import Exposure

    with night.engine.begin() as conn:
        conn.execute(update(Exposure).where(Exposure.frame_number == 3852).values(airmass=float("nan")))
        conn.execute(update(Exposure).where(Exposure.frame_number == 3853).values(airmass=None))
    with client(night, tmp_path) as http:
        page = http.get("/exposures", params={"q": "frame_number in (3852, 3853)", "columns": "frame_number,airmass",
                                              "sort": "frame_number"}).text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    nan = "" if night.dialect == "sqlite" else "nan"
    assert [c.strip() for c in cells] == ["3852", nan, "3853", ""], cells


def test_search_page_is_a_sortable_table_with_bookmarkable_urls(night, tmp_path):
    with client(night, tmp_path) as http:
        page = http.get("/exposures", params={"q": "frame_type == 'science'", "columns": "id,frame_number,band",
                                              "sort": "-frame_number"})
    assert page.status_code == 200
    body = page.text
    assert body.count("<tr><td>") == 12
    assert body.index(">3877<") < body.index(">3866<")  # descending
    assert "sort=frame_number" in body  # the header toggles the order
    assert 'value="frame_type == &#39;science&#39;"' in body  # the selection stays in its box
    # the CSV and JSON links export every match: they carried the page's limit=500 and cut an export there
    exports = re.findall(r'href="(/exposures\.(?:csv|json)\?[^"]*)"', body)
    assert len(exports) == 2 and not any("limit=" in link for link in exports)
    with client(night, tmp_path) as http:
        limited = http.get("/exposures", params={"q": "", "limit": 2}).text
        link = re.search(r'href="(/exposures\.csv\?[^"]*)"', limited).group(1).replace("&amp;", "&")
        assert "(the first 2: more match)" in limited and len(http.get(link).text.splitlines()) == 1 + len(night.query())


def test_a_search_that_finds_nothing_says_which_value_no_exposure_has(night, tmp_path):
    with client(night, tmp_path) as http:
        page = http.get("/exposures", params={"q": "frame_type == 'sceince' and band == 'V'"})
        found = http.get("/exposures", params={"q": "frame_type == 'science' and band == 'V'"})
    assert page.status_code == 200 and "0 exposures" in page.text
    assert '<p class="hint">no exposure has frame_type &#39;sceince&#39;; did you mean &#39;science&#39;?</p>' in page.text
    assert 'class="hint"' not in found.text


@pytest.mark.parametrize("selection, message", [
    ("band ==", "at column 8"),
    ("band == 'V' and", "at column 16"),
    ("colour == 'red'", "colour"),
    ("exptime > 'long'", "exptime"),
])
def test_selection_errors_are_shown_inline_never_a_server_error(night, tmp_path, selection, message):
    with client(night, tmp_path) as http:
        page = http.get("/exposures", params={"q": selection})
        as_csv = http.get("/exposures.csv", params={"q": selection})
        as_json = http.get("/exposures.json", params={"q": selection})
    assert page.status_code == 400 and 'id="selection-error"' in page.text and message in page.text
    assert as_csv.status_code == 400 and message in as_csv.text and len(as_csv.text.strip().splitlines()) == 1
    assert as_json.status_code == 400 and message in as_json.json()["error"]


# -- grading ------------------------------------------------------------------------------


def test_a_grade_is_a_persons_flag_recorded_as_obsarch_flag_records_it(night, tmp_path):
    web_id, cli_id = night.resolve("3870"), night.resolve("3871")
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post(f"/exposures/{web_id}/flags", data={"grade": "bad", "reason": "tracking", "note": "trail"})
    assert answer.status_code == 201
    assert answer.json()["who"] == getpass.getuser() and len(answer.json()["flag_ids"]) == 1
    assert answer.json()["reason"] == "tracking"
    cli(night, "flag", "3871", "--grade", "bad", "--reason", "tracking", "--note", "trail")
    by_web, by_cli = quality.flag_history(night.engine, web_id)[-1], quality.flag_history(night.engine, cli_id)[-1]
    ignore = ("id", "created_at")
    assert {k: v for k, v in by_web.items() if k not in ignore} == {k: v for k, v in by_cli.items() if k not in ignore}
    assert by_web["source"] == "person" and by_web["current"]
    history = cli(night, "flags", "history", "3870", "--format", "csv")
    assert history.strip().splitlines()[-1].split(",")[2:5] == ["bad", "tracking", "person"]
    assert cli(night, "query", "grade == 'bad'", "--columns", "frame_number", "--format", "csv").split() == [
        "frame_number", "3870", "3871"]


def test_an_html_form_post_goes_back_to_the_frame(night, tmp_path):
    exposure_id = night.resolve("3870")
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "ok"}, headers={"accept": "text/html"},
                           follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/exposures/{exposure_id}"


@pytest.mark.parametrize("form, status, message", [
    ({"grade": "superb"}, 400, "unknown grade 'superb'"),
    ({"grade": "bad", "reason": "gremlins"}, 400, "unknown reason 'gremlins'"),
    ({}, 400, "unknown grade ''"),
])
def test_bad_flag_forms_are_refused_with_one_line(night, tmp_path, form, status, message):
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post(f"/exposures/{night.resolve('3870')}/flags", data=form)
    assert answer.status_code == status and message in answer.text and len(answer.text.strip().splitlines()) == 1


def test_flagging_an_unknown_exposure_is_404(night, tmp_path):
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post("/exposures/999999/flags", data={"grade": "bad"})
    assert answer.status_code == 404 and "no exposure with id 999999" in answer.text


def test_undo_takes_back_only_ones_own_flags(night, tmp_path):
    exposure_id = night.resolve("3870")
    before = quality.flag_history(night.engine, exposure_id)
    with client(night, tmp_path, allow_write=True) as http:
        made = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "bad"}).json()["flag_ids"]
        quality.flag(night.engine, "3870", "great", who="someone-else")
        other = quality.flag_history(night.engine, exposure_id)[-1]["id"]
        refused = http.post("/flags/retract", data={"ids": str(other)})
        undone = http.post("/flags/retract", data={"ids": ",".join(map(str, made))})
    assert refused.status_code == 403 and "not " in refused.text
    # the answer gives the frame's grade now: someone else's 'great', made after the undone flag, not what the page
    # showed before it (the night view put back the grade it showed before)
    assert undone.status_code == 200
    assert undone.json() == {"retracted": 1, "current": {str(exposure_id): {"grade": "great", "reason": None, "source": "person"}}}
    after = quality.flag_history(night.engine, exposure_id)
    assert [f["id"] for f in after] == [f["id"] for f in before] + [other]


# -- security -----------------------------------------------------------------------------


def test_read_only_unless_allow_write(night, tmp_path):
    exposure_id = night.resolve("3870")
    with client(night, tmp_path) as http:
        answer = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "bad"})
        page = http.get(f"/nights/{NIGHT}")
    assert answer.status_code == 403 and "read-only" in answer.text
    assert quality.flag_history(night.engine, exposure_id)[-1]["source"] == "rule"
    assert 'data-writable="false"' in page.text and "--allow-write" in page.text


@pytest.mark.parametrize("origin, status", [
    ("http://evil.example", 403),
    ("null", 403),
    ("http://testserver:8080", 403),
    ("http://testserver", 201),
    (None, 201),  # a script's POST (curl sends no Origin)
])
def test_cross_site_posts_are_refused_by_their_origin(night, tmp_path, origin, status):
    headers = {"origin": origin} if origin else {}
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post(f"/exposures/{night.resolve('3870')}/flags", data={"grade": "bad"}, headers=headers)
    assert answer.status_code == status
    if status == 403:
        assert f"a request from {origin} may not change this catalog" in answer.text


def test_with_a_token_every_request_needs_it_and_flags_carry_its_name(night, tmp_path):
    exposure_id = night.resolve("3870")
    tokens = parse_tokens(["ann:s3cret", "bob:other"], "root")
    with client(night, tmp_path, allow_write=True, tokens=tokens) as http:
        refused = http.get("/nights")
        assert refused.status_code == 401 and refused.text.startswith("refused: this server needs a token")
        assert http.get("/nights", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/nights", headers={"authorization": "Bearer s3cret"}).status_code == 200
        posted = http.post(f"/exposures/{exposure_id}/flags", data={"grade": "great"},
                           headers={"authorization": "Bearer s3cret"})
        first_visit = http.get("/nights?token=other", follow_redirects=False)
        assert first_visit.status_code == 303 and first_visit.headers["location"] == "/nights"
        assert "samesite=strict" in first_visit.headers["set-cookie"].lower()
        assert http.get("/nights").status_code == 200  # the cookie from now on
    assert posted.status_code == 201 and posted.json()["who"] == "ann"
    assert quality.flag_history(night.engine, exposure_id)[-1]["who"] == "ann"


def test_a_malformed_token_is_refused_in_one_line():
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--token", "ann:"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: token 'ann:': give SECRET or NAME:SECRET"]


@pytest.mark.parametrize("path, form, message", [
    ("/flags/retract", {"ids": "1,x"}, "ids: flag ids separated by commas"),
    ("/flags/retract", {"ids": "999999"}, "flags 999999 are not"),
    ("/flags/retract", {"ids": ""}, "ids: give the flags to take back"),  # was 200 {"retracted": 0}
    ("/flags/retract", {}, "ids: give the flags to take back"),
])
def test_bad_undo_requests_say_why(night, tmp_path, path, form, message):
    with client(night, tmp_path, allow_write=True) as http:
        answer = http.post(path, data=form)
    assert answer.status_code in (400, 403) and message in answer.text
    assert answer.status_code == 400 or "are not" in message


def test_tokens_are_named_and_compared_whole():
    tokens = parse_tokens(["s3cret", "ann:abc"], "root")
    assert tokens == {"s3cret": "root", "abc": "ann"}
    assert token_name("s3cret", tokens) == "root" and token_name("s3cre", tokens) is None and token_name(None, tokens) is None
    with pytest.raises(ValueError, match="NAME:SECRET"):
        parse_tokens(["ann:"], "root")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_serve_refuses_another_address_without_a_token_in_one_line(host):
    result = runner.invoke(cli_app, ["serve", "--host", host])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: serving on {host} lets anyone who reaches it read the catalog: give --token SECRET (or NAME:SECRET), "
        "or serve on 127.0.0.1"]


def test_a_loopback_server_refuses_other_host_names(night, tmp_path):
    with TestClient(create_app(catalog=night, thumbnails=tmp_path / "t", allowed_hosts=["127.0.0.1", "localhost"]),
                    base_url="http://127.0.0.1:8765") as http:
        assert http.get("/nights").status_code == 200
        assert http.get("/nights", headers={"host": "attacker.example"}).status_code == 400


# -- pages --------------------------------------------------------------------------------


def test_night_view_shows_every_frame_with_its_grade_and_plots(night, tmp_path):
    with client(night, tmp_path, allow_write=True) as http:
        everything = http.get(f"/nights/{NIGHT}")
        v_band = http.get(f"/nights/{NIGHT}", params={"band": "V"})
        nights = http.get("/nights")
        missing = http.get("/nights/1999-01-01")
    assert everything.text.count('class="card ') == 26
    assert v_band.text.count('class="card ') == 7  # 3 flats, 4 science
    assert v_band.text.count("<svg class=\"plot\"") == 3
    assert v_band.text.count('class="point ') == 3 * 4  # background, FWHM, elongation of the science frames
    assert "grade-ok" in v_band.text and "#3871" in v_band.text
    assert f'href="/nights/{NIGHT}?band=V"' in nights.text
    assert missing.status_code == 404 and "no raw frames in night 1999-01-01" in missing.text


def test_nights_count_the_frames_obsarch_summary_counts(night, tmp_path):
    """The nights page counted masters and calibrated frames beside the raw
    frames, so a night had more frames there than in `obsarch summary`
    (a user trial): both count raw frames, by one definition."""
    from processing import calibration

    calibration.make_master(night.engine, "bias", None, out_dir=tmp_path / "masters")
    calibration.calibrate(night.engine, "band == 'V' and frame_type == 'science'", use=("bias",), out_dir=tmp_path / "cal",
                          executor="serial")
    assert len(night.exposure_ids("product is not null")) == 5  # a master and 4 calibrated frames
    summary = night.summary()["night"].set_index("night")["exposures"].to_dict()
    with client(night, tmp_path) as http:
        page = http.get("/nights").text
    shown: dict[str, int] = {}
    for day, count in re.findall(r'<a href="/nights/([0-9-]+)">[^<]*</a></td>\s*<td>.*?</td>\s*<td>(\d+)</td>', page):
        shown[day] = shown.get(day, 0) + int(count)
    assert shown == summary == {NIGHT: 26}


def test_a_nights_view_shows_its_raw_frames_and_links_to_its_products(night, tmp_path):
    """The night view showed masters and calibrated frames beside the raw frames,
    so it had more cards than the /nights row it was opened from (a user trial)."""
    from processing import calibration

    calibration.make_master(night.engine, "bias", None, out_dir=tmp_path / "masters")
    calibration.calibrate(night.engine, "band == 'V' and frame_type == 'science'", use=("bias",), out_dir=tmp_path / "cal",
                          executor="serial")
    raw = set(night.exposure_ids("product is null"))
    with client(night, tmp_path) as http:
        page = http.get(f"/nights/{NIGHT}").text
        v_page = http.get(f"/nights/{NIGHT}", params={"band": "V"}).text
        link = re.search(r'also has <a href="(/exposures\?q=[^"]+)">(\d+) products</a>', page)
        listed = http.get(link.group(1).replace("&amp;", "&") + "&limit=100").text
        empty = http.get("/nights/2001-01-01")
    cards = {int(i) for i in re.findall(r'data-id="(\d+)"', page)}
    assert cards == raw and len(cards) == 26
    assert int(link.group(2)) == 5  # a master bias and 4 calibrated frames
    assert "4 products</a>" in v_page  # the calibrated V frames; the bias has no band
    assert sorted(map(int, re.findall(r'href="/exposures/(\d+)"', listed))) == sorted(night.exposure_ids("product is not null"))
    assert empty.status_code == 404 and "no raw frames in night 2001-01-01" in empty.text


def test_frame_page_shows_headers_metrics_flags_groups_offsets_and_lineage(night, tmp_path):
    from processing import calibration, grouping

    grouping.create_group(night.engine, "v-science", "band == 'V' and frame_type == 'science'", reference="3871")
    calibration.make_master(night.engine, "bias", None, out_dir=tmp_path / "masters")
    bias = night.resolve("3852")
    master = night.exposure_ids("product == 'master_bias'")[0]
    science = night.resolve("3871")
    with client(night, tmp_path) as http:
        frame = http.get(f"/exposures/{science}")
        bias_page = http.get(f"/exposures/{bias}")
        master_page = http.get(f"/exposures/{master}")
        headers = http.get(f"/exposures/{science}/headers", params={"filter": "drot"})
        missing = http.get("/exposures/999999")
    assert frame.status_code == 200
    for text in ("EXPTIME", "ESO INS DROT POSANG", "fwhm", "background_rms", "v-science", "reference", "rule", "a raw file"):
        assert text in frame.text, text
    assert f'href="/exposures/{master}"' in bias_page.text and "master_bias" in bias_page.text  # lineage down
    assert f'href="/exposures/{bias}"' in master_page.text and "bias" in master_page.text  # lineage up
    # a product says what it is where a raw frame's facts are (only its lineage said it)
    assert "<b>product</b> master_bias</span>" in master_page.text and "<b>product</b>" not in frame.text
    assert "ESO INS DROT POSANG" in headers.text and "EXPTIME" not in headers.text
    assert missing.status_code == 404 and "no exposure with id 999999" in missing.text


def test_processing_page_lists_runs_with_parameters_and_stale_products(night, tmp_path):
    from processing import calibration

    calibration.make_master(night.engine, "bias", None, out_dir=tmp_path / "masters")
    write_image(tmp_path / "night" / "ngc3293-3852.fits", np.full((128, 128), 5.0, dtype=np.float32),
                {"IMAGETYP": "Bias Frame", "EXPTIME": 0.0, "DATE-OBS": "2017-08-16T01:00:00"})
    night.ingest([tmp_path / "night"])  # an input of the master changed
    runs = cli(night, "runs")  # noqa: F841  (the CLI reads the same catalog while the page is made)
    with client(night, tmp_path) as http:
        page = http.get("/processing")
        run_id = int(page.text.split('href="/processing/runs/')[1].split('"')[0])
        run = http.get(f"/processing/runs/{run_id}")
        missing = http.get("/processing/runs/99999")
    assert "master-bias" in page.text or "master_bias" in page.text
    assert "quality" in page.text and "changed" in page.text  # the stale master and why
    assert run.status_code == 200 and "Parameters" in run.text and "Items read" in run.text
    assert missing.status_code == 404 and "no processing run 99999" in missing.text
    # runs exist: an empty page says why instead of "no processing runs yet", and a cut list says more exist
    with client(night, tmp_path) as http:
        none_asked, no_step, cut = (http.get("/processing", params=p).text for p in ({"limit": 0}, {"step": "bogus"},
                                                                                      {"limit": 1}))
    assert "none asked for (limit=0)" in none_asked and "no run of step bogus" in no_step
    assert "no processing runs yet" not in none_asked + no_step
    assert "the newest 1 run; more exist" in cut and "more exist" not in page.text


def test_processing_page_lists_the_ingests_as_obsarch_runs_does(night, tmp_path):
    """The web app showed no ingest: what was read, when, by whom and what failed was only on the command line."""
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "cut.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)  # a header cut short
    night.ingest([tmp_path / "more"])
    listed = night.runs()
    ingests = listed[listed.step == "ingest"]
    with client(night, tmp_path) as http:
        page = http.get("/processing").text
    section = page.split("<h2>Ingests</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr class=\"state-\w+\"><td>(i\d+)</td><td>([^<]*)</td>", section)
    assert [run for run, _ in rows] == list(ingests.run) == ["i2", "i1"]
    assert rows[0][1] == str(tmp_path / "more")
    assert "0 new, 0 changed, 0 unchanged, 0 missing, 1 failed" in section and getpass.getuser() in section
    with client(night, tmp_path) as http, patch("web.app.INGESTS_SHOWN", 1):
        cut = http.get("/processing").text
    assert "the newest 1 ingest; more exist" in cut


def test_processing_page_says_when_nothing_was_ingested(catalog, tmp_path):
    with client(catalog, tmp_path) as http:
        page = http.get("/processing").text
    assert "no ingest yet" in page


def test_a_run_page_lists_its_items_and_each_tool_run_shows_its_output(night, tmp_path):
    frame = night.resolve("3871")
    cli(night, "run", "--each", "exposure", "3870-3871", "--workdir", str(tmp_path / "work" / "{item}"), "--workers", "1",
        "--", "sh", "-c", "echo out-{frame}; echo err-{frame} >&2")
    from sqlalchemy import func, select

    from archive.models import Run

    with night.engine.connect() as conn:
        parent = conn.execute(select(func.max(Run.id)).where(Run.parent_id.is_(None))).scalar_one()
    with client(night, tmp_path) as http:
        assert f'href="/processing/runs/{parent}"' in http.get("/processing").text
        run = http.get(f"/processing/runs/{parent}")
        children = [int(part.split('"')[0]) for part in run.text.split('href="/processing/runs/')[1:]]
        logs = [http.get(f"/processing/runs/{child}").text for child in children]
    assert run.status_code == 200 and "Items (2)" in run.text and len(children) == 2
    assert any("out-3871" in log and "err-3871" in log and "<h3>stderr</h3>" in log for log in logs), frame


# -- thumbnails ---------------------------------------------------------------------------


def test_thumbnails_are_made_once_per_file_version_and_kept(night, tmp_path):
    exposure_id = night.resolve("3870")
    with client(night, tmp_path) as http:
        first = http.get(f"/exposures/{exposure_id}/thumbnail.png")
        cached = sorted((tmp_path / "thumbs").glob("*.png"))
        stamp = cached[0].stat().st_mtime_ns
        again = http.get(f"/exposures/{exposure_id}/thumbnail.png")
        assert first.content[:8] == b"\x89PNG\r\n\x1a\n" and again.content == first.content
        assert [p.name.split("-")[:2] for p in cached] == [[str(exposure_id), "v1"]] and cached[0].stat().st_mtime_ns == stamp
        time.sleep(0.01)
        write_image(tmp_path / "night" / "ngc3293-3870.fits", np.zeros((64, 64), dtype=np.float32) + 3,
                    {"FILTER": "R", "DATE-OBS": "2017-08-16T02:00:00"})
        # a browser asks again with the ETag it has: the same picture costs a 304; it kept one a day (max-age) before,
        # and showed the old picture after the file changed under the same URL
        assert first.headers["cache-control"] == "private, no-cache"
        assert http.get(f"/exposures/{exposure_id}/thumbnail.png", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        night.ingest([tmp_path / "night"])
        changed = http.get(f"/exposures/{exposure_id}/thumbnail.png", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.content != first.content
    assert sorted(p.name.split("-")[:2] for p in (tmp_path / "thumbs").glob("*.png")) == [[str(exposure_id), "v1"],
                                                                                         [str(exposure_id), "v2"]]


def test_the_thumbnail_directory_can_be_removed_while_serving(night, tmp_path):
    """The README says deleting the cache is always safe: the pictures are made again on demand."""
    import shutil

    exposure_id = night.resolve("3870")
    with client(night, tmp_path) as http:
        first = http.get(f"/exposures/{exposure_id}/thumbnail.png")
        assert f"/exposures/{exposure_id}/thumbnail.png" in http.get(f"/nights/{NIGHT}").text  # known as made
        # The night page set the other thumbnails going: one may land while rmtree
        # runs ("directory not empty"). Moving the directory away is the deletion
        # the server sees, at once; it is then removed at leisure.
        (tmp_path / "thumbs").rename(tmp_path / "gone")
        shutil.rmtree(tmp_path / "gone", ignore_errors=True)
        again = http.get(f"/exposures/{exposure_id}/thumbnail.png")
    assert first.status_code == again.status_code == 200 and again.content == first.content
    assert list((tmp_path / "thumbs").glob(f"{exposure_id}-v1-*.png"))


def test_a_frame_without_a_picture_says_why(night, tmp_path):
    write_image(tmp_path / "night" / "blank.fits", np.full((32, 32), np.nan, dtype=np.float32), {"FILTER": "V"})
    night.ingest([tmp_path / "night"])
    exposure_id = night.exposure_ids("relpath == 'blank.fits'")[0]
    with client(night, tmp_path) as http:
        answer = http.get(f"/exposures/{exposure_id}/thumbnail.png")
        state = http.get("/thumbnails/state", params={"ids": str(exposure_id)}).json()
        bad = http.get("/thumbnails/state", params={"ids": "a,b"})
    assert answer.status_code == 404 and "no finite pixels" in answer.text
    assert state == {str(exposure_id): {"state": "failed", "reason": "no finite pixels to show"}}
    assert bad.status_code == 400 and bad.text == "ids: exposure ids separated by commas\n"


def test_the_night_view_asks_for_its_thumbnails_in_the_background(night, tmp_path):
    with client(night, tmp_path) as http:
        page = http.get(f"/nights/{NIGHT}", params={"band": "B"})
        assert page.text.count("data-pending=") == 7
        review = http.app.state.review
        deadline = time.monotonic() + 60
        while review.thumbnails.progress.waiting and time.monotonic() < deadline:
            time.sleep(0.1)
        progress = http.get("/thumbnails/progress").text
        again = http.get(f"/nights/{NIGHT}", params={"band": "B"})
    assert "thumbnails 7/7" in progress
    assert again.text.count("data-pending=") == 0 and again.text.count("/thumbnail.png") == 7


@pytest.mark.parametrize("stretch", ["zscale", "minmax", "percentile", "asinh"])
def test_preview_in_every_stretch(night, tmp_path, stretch):
    with client(night, tmp_path) as http:
        answer = http.get(f"/exposures/{night.resolve('3870')}/preview.png", params={"stretch": stretch})
    assert answer.status_code == 200 and answer.content[:4] == b"\x89PNG"


def test_a_multi_extension_file_is_a_mosaic_or_one_detector(catalog, tmp_path, rng):
    from astropy.io import fits

    detectors = [fits.ImageHDU(rng.normal(100 * i, 1, (64, 48)).astype(np.float32), name=f"CHIP{i}") for i in range(1, 5)]
    fits.HDUList([fits.PrimaryHDU(), *detectors]).writeto(tmp_path / "mosaic.fits")
    catalog.ingest([tmp_path / "mosaic.fits"])
    exposure_id = catalog.exposure_ids()[0]
    with client(catalog, tmp_path) as http:
        mosaic = http.get(f"/exposures/{exposure_id}/preview.png")
        one = http.get(f"/exposures/{exposure_id}/preview.png", params={"hdu": 2})
        page = http.get(f"/exposures/{exposure_id}")
        bad = http.get(f"/exposures/{exposure_id}/preview.png", params={"stretch": "sqrt"})
    assert mosaic.status_code == one.status_code == 200 and mosaic.content != one.content
    assert page.text.count('<option value="') >= 4 and "CHIP3" in page.text
    quality.compute(catalog.engine, workers=1)
    with client(catalog, tmp_path) as http:
        measured = http.get(f"/exposures/{exposure_id}")
    assert "Per detector" in measured.text and measured.text.count("<td>CHIP") == 4
    assert bad.status_code == 400 and "unknown stretch 'sqrt'" in bad.text
    with client(catalog, tmp_path) as http:
        sneaky = http.get(f"/exposures/{exposure_id}/preview.png", params={"hdu": "../../../x"})
        absent = http.get(f"/exposures/{exposure_id}/preview.png", params={"hdu": "9"})
    assert sneaky.status_code == 400 and "give an HDU index" in sneaky.text
    assert absent.status_code == 404 and "HDU 9 has no image" in absent.text
    assert not list(tmp_path.glob("x*"))


def test_default_thumbnail_directory_is_beside_the_catalog(catalog, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    directory = default_directory(catalog.engine)
    if catalog.dialect == "sqlite":
        assert directory == tmp_path / "catalog.db.thumbnails"
    else:
        assert directory.parent == tmp_path / "cache" / "obsarch" / "thumbnails"
        assert directory.name.startswith("127.0.0.1-5432-test-")


# -- concurrency --------------------------------------------------------------------------


def test_pages_answer_while_the_cli_writes(night, tmp_path):
    problems = []

    def flag_with_the_cli():
        for number in range(3866, 3878):
            result = runner.invoke(cli_app, ["--db", night.engine.url.render_as_string(hide_password=False),
                                             "flag", str(number), "--grade", "marginal", "--by", "cli"])
            if result.exit_code:
                problems.append(result.stderr)

    writer = threading.Thread(target=flag_with_the_cli)
    with client(night, tmp_path, allow_write=True) as http:
        writer.start()
        answers = []
        for _ in range(12):
            answers.append(http.get(f"/nights/{NIGHT}").status_code)
            answers.append(http.post(f"/exposures/{night.resolve('3852')}/flags", data={"grade": "ok"}).status_code)
        writer.join()
    assert problems == [] and set(answers) <= {200, 201}
    assert night.query("grade == 'marginal'", columns="frame_number")["frame_number"].tolist() == list(range(3866, 3878))
    assert len([f for f in quality.flag_history(night.engine, night.resolve("3852")) if f["source"] == "person"]) == 12


def test_every_page_is_html_that_loads_only_from_this_server(night, tmp_path):
    with client(night, tmp_path, allow_write=True) as http:
        for path in ("/nights", f"/nights/{NIGHT}", "/exposures", f"/exposures/{night.resolve('3870')}", "/processing"):
            body = http.get(path).text
            assert body.startswith("<!DOCTYPE html>"), path
            assert "http://" not in body.replace('href="http://127.0.0.1', "") and "https://" not in body, path
        assert http.get("/static/htmx.min.js").status_code == 200
        assert "Zero-Clause BSD" in http.get("/static/htmx.LICENSE").text


# -- the static report, on the same templates ------------------------------------------------


def test_static_report_uses_the_review_templates_and_needs_only_its_directory(night, tmp_path):
    out = cli(night, "report", "quality", "--html", str(tmp_path / "report"))
    assert "26 frames, 0 without a thumbnail" in out
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count('class="card ') == 26 and page.count('<svg class="plot"') == 9  # 3 plots for each of B, V, R
    assert "<script" not in page and "http://" not in page and "https://" not in page and "/static/" not in page
    assert len(list((tmp_path / "report" / "thumbs").glob("*.png"))) == 26


def test_time_plot_places_points_inside_its_box_and_skips_missing_values():
    from datetime import datetime

    from web.plots import time_plot

    rows = [{"id": i, "frame_number": 10 + i, "grade": "ok", "date_obs": datetime(2017, 8, 16, 3, i * 10), "fwhm": v}
            for i, v in enumerate([2.0, 3.0, float("nan"), None, 4.0])]
    plot = time_plot(rows, "fwhm", "FWHM [px]")
    assert [p["id"] for p in plot.points] == [0, 1, 4]
    assert all(plot.left <= p["x"] <= plot.width and 0 <= p["y"] <= plot.bottom for p in plot.points)
    assert plot.points[0]["y"] > plot.points[1]["y"] > plot.points[2]["y"]  # larger values higher up
    assert [label for _, label in plot.x_ticks] == ["03:00", "03:10", "03:20", "03:30", "03:40"]
    assert time_plot([{"id": 1, "date_obs": None, "fwhm": 2.0}], "fwhm", "FWHM") is None


# -- real files ------------------------------------------------------------------------------


def test_every_real_file_has_its_pages_and_a_picture_or_the_reason(catalog, real_data, tmp_path):
    catalog.ingest([real_data])
    with client(catalog, tmp_path) as http:
        for night in {row["night"] for row in catalog.nights() if row["night"]}:
            assert http.get(f"/nights/{night}").status_code == 200, night
        pictures = 0
        for exposure_id in catalog.exposure_ids():
            assert http.get(f"/exposures/{exposure_id}").status_code == 200, exposure_id
            answer = http.get(f"/exposures/{exposure_id}/thumbnail.png")
            assert answer.status_code in (200, 404), (exposure_id, answer.text)
            if answer.status_code == 404:
                assert answer.text.startswith("no picture: ") and len(answer.text.strip().splitlines()) == 1
            pictures += answer.status_code == 200
    lco = catalog.exposure_ids("relpath glob '*1159-e91.fits.fz'")[0]  # tile-compressed SCI with its BPM
    assert list((tmp_path / "thumbs").glob(f"{lco}-v1-*.png"))
    from processing.report import detector_images

    path = catalog.query(f"id == {lco}", columns="path")["path"][0]
    assert [name for _, name, _ in detector_images(path)] == ["SCI"]  # the mask is no detector
    assert pictures >= 20


def test_the_thumbnail_worker_survives_a_file_it_cannot_picture(tmp_path, monkeypatch):
    from web import thumbnails

    def broken(path, size):
        if "odd" in path:
            raise KeyError("a surprise")
        return np.zeros((4, 4))

    monkeypatch.setattr(thumbnails, "picture", broken)
    cache = thumbnails.ThumbnailCache(tmp_path / "thumbs")
    odd, fine = thumbnails.Item(1, 1, "odd.fits"), thumbnails.Item(2, 1, "fine.fits")
    assert cache.wait(odd, 10) == ("failed", "cannot make a picture: KeyError: 'a surprise'")
    assert cache.wait(fine, 10) == ("ready", None)
    cache.close()


def test_a_frame_is_labelled_by_its_frame_number_even_0_and_never_by_its_id(catalog, tmp_path):
    """Frame 0 was shown as '#84', its exposure id, which reads as frame 84;
    so was a frame without a number."""
    rng = np.random.default_rng(5)
    base = {"IMAGETYP": "Light Frame", "FILTER": "V", "DATE-OBS": "2017-08-16T01:00:00"}
    write_image(tmp_path / "n" / "zero.fits", rng.normal(100, 1, (16, 16)).astype(np.float32), {**base, "FRAMENUM": 0})
    write_image(tmp_path / "n" / "unnumbered.fits", rng.normal(100, 1, (16, 16)).astype(np.float32), base)
    catalog.ingest([tmp_path / "n"])
    ids = {path.rsplit("/", 1)[1]: i for i, path in catalog.query(None, columns="id,path").itertuples(index=False)}
    with client(catalog, tmp_path) as http:
        zero, unnumbered = (http.get(f"/exposures/{ids[name]}").text for name in ("zero.fits", "unnumbered.fits"))
        cards = http.get(f"/nights/{NIGHT}", params={"band": "V"}).text
    assert "<h1>#0 <small>" in zero
    assert f"<h1>exposure {ids['unnumbered.fits']} <small>" in unnumbered
    assert ">#0</a>" in cards and f">exposure {ids['unnumbered.fits']}</a>" in cards
