"""Archives without the internet: a local server answers what astroquery asks
and serves the files, so the real client code runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from archive_server import Server, good_tar, malicious_tar
from factories import obsarch
from sqlalchemy import select

from archive import downloads, fetch
from archive.exceptions import ObsarchError
from archive.models import Download, Observation


@pytest.fixture
def server():
    with Server() as running:
        yield running


def _states(catalog) -> dict[str, tuple[str, str | None]]:
    with catalog.engine.connect() as conn:
        return {Path(r.local_path).name: (r.state, r.last_error)
                for r in conn.execute(select(Download.local_path, Download.state, Download.last_error))}


def test_search_records_known_observations(catalog, server):
    rows, new = fetch.search(catalog.engine, "heasarc", "xmm", "NGC 5506", config=server.config())
    assert [r["obsid"] for r in rows] == ["0013140101", "0201830201", "0761220101"] and new == 3
    assert rows[0]["exptime"] == 30000.0 and rows[0]["t_start"].year == 2000
    _, again = fetch.search(catalog.engine, "heasarc", "xmm", "NGC 5506", config=server.config())
    assert again == 0
    assert {r["state"] for r in fetch.downloads_table(catalog.engine)} == {"known"}
    sesame = [headers["query"] for method, path, headers in server.archive.requests if path.startswith("/sesame/")]
    # Each search asked (our stand-in for) Sesame: none answered from astropy's cache.
    assert sesame == ["NGC 5506", "NGC 5506"]
    adql = [form["QUERY"][0] for method, path, form in server.archive.requests if path.endswith("/tap/sync")]
    assert "FROM xmmmaster" in adql[0] and "CIRCLE" in adql[0]


def test_fetch_downloads_ingests_and_links(catalog, server, tmp_path):
    summary = fetch.fetch_heasarc(catalog.engine, "xmm", ["0013140101", "0761220101"], dest=tmp_path / "data", config=server.config())
    assert summary.queue.done == 4 and not summary.queue.failed and summary.linked == 4
    frame = catalog.query("obsid == '0761220101'", columns="relpath,obsid")
    assert sorted(frame["relpath"]) == ["odf/events.fits", "pps/spectrum.fits.gz"]
    from archive.models import Exposure

    with catalog.engine.connect() as conn:
        linked = conn.execute(select(Observation.obsid).join(Exposure, Exposure.observation_id == Observation.id)
                              .where(Exposure.obsid == "0761220101")).scalars().all()
    assert linked == ["0761220101", "0761220101"]
    states = {r["obsid"]: r["state"] for r in fetch.downloads_table(catalog.engine)}
    assert states == {"0013140101": "done", "0761220101": "done"}
    again = fetch.fetch_heasarc(catalog.engine, "xmm", ["0761220101"], dest=tmp_path / "data", config=server.config())
    assert again.queued == 0 and again.queue.done == 0  # nothing fetched twice
    assert not list((tmp_path / "data").rglob("*.part"))


def test_unknown_obsid_and_mission(catalog, server, tmp_path):
    with pytest.raises(ObsarchError, match="xmm has no observation 0999999999 in xmmmaster"):
        fetch.fetch_heasarc(catalog.engine, "xmm", ["0999999999"], dest=tmp_path, config=server.config())
    with pytest.raises(ObsarchError, match="unknown HEASARC mission 'rosat'"):
        fetch.fetch_heasarc(catalog.engine, "rosat", ["1"], dest=tmp_path, config=server.config())


def _queue_one(catalog, server, tmp_path, path: str, *, checksum=None) -> None:
    fetch.enqueue(catalog.engine, None, [(server.url + path, tmp_path / "q" / Path(path).name)],
                  checksums={server.url + path: checksum} if checksum else None)


def test_server_errors_retry_with_backoff_and_are_recorded(catalog, server, tmp_path):
    archive = server.archive
    archive.files["/files/flaky.fits"] = archive.files["/FTP/xmm/data/0013140101/odf/events.fits"]
    archive.files["/files/broken.fits"] = archive.files["/FTP/xmm/data/0013140101/odf/events.fits"]
    archive.fail_times["/files/flaky.fits"] = 2
    archive.fail_times["/files/broken.fits"] = 99
    _queue_one(catalog, server, tmp_path, "/files/flaky.fits")
    _queue_one(catalog, server, tmp_path, "/files/broken.fits")
    summary = fetch.run_queue(catalog.engine, retries=3, backoff=0.01)
    states = _states(catalog)
    assert states["flaky.fits"] == ("done", None)
    assert states["broken.fits"][0] == "failed" and "HTTP 500" in states["broken.fits"][1]
    assert summary.done == 1 and len(summary.failed) == 1
    with catalog.engine.connect() as conn:
        attempts = dict(conn.execute(select(Download.local_path, Download.attempts)).all())
    assert attempts[str(tmp_path / "q" / "flaky.fits")] == 3
    archive.fail_times["/files/broken.fits"] = 0
    assert fetch.retry_failed(catalog.engine) == 1
    fetch.run_queue(catalog.engine, backoff=0.01)
    assert _states(catalog)["broken.fits"] == ("done", None)


def test_timeout(catalog, server, tmp_path):
    server.archive.files["/files/slow.fits"] = b"x" * 100
    server.archive.stall.add("/files/slow.fits")
    _queue_one(catalog, server, tmp_path, "/files/slow.fits")
    fetch.run_queue(catalog.engine, retries=1, timeout=0.5)
    state, error = _states(catalog)["slow.fits"]
    assert state == "failed" and "timed out after 0.5 s" in error


def test_truncated_transfer_resumes_from_where_it_stopped(catalog, server, tmp_path):
    data = bytes(range(256)) * 400
    server.archive.files["/files/big.fits"] = data
    server.archive.break_once.add("/files/big.fits")
    _queue_one(catalog, server, tmp_path, "/files/big.fits")
    fetch.run_queue(catalog.engine, retries=2, backoff=0.01)
    assert (tmp_path / "q" / "big.fits").read_bytes() == data
    ranges = [headers.get("Range") for method, path, headers in server.archive.requests if path == "/files/big.fits"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"


def test_an_interrupted_download_resumes(catalog, server, tmp_path):
    data = bytes(range(256)) * 100
    server.archive.files["/files/part.fits"] = data
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "part.fits.part").write_bytes(data[:1000])  # left by a killed run
    _queue_one(catalog, server, tmp_path, "/files/part.fits")
    with catalog.engine.begin() as conn:  # the killed run left it "downloading"
        conn.execute(Download.__table__.update().values(state="downloading"))
    fetch.run_queue(catalog.engine)
    assert (tmp_path / "q" / "part.fits").read_bytes() == data
    assert [h.get("Range") for m, p, h in server.archive.requests if p == "/files/part.fits"] == ["bytes=1000-"]


def test_checksum_mismatch_is_refused(catalog, server, tmp_path):
    server.archive.files["/files/sum.fits"] = b"A" * 5000
    _queue_one(catalog, server, tmp_path, "/files/sum.fits", checksum="md5:" + "0" * 32)
    fetch.run_queue(catalog.engine, retries=2, backoff=0.01)
    state, error = _states(catalog)["sum.fits"]
    assert state == "failed" and "checksum mismatch: md5" in error
    assert not (tmp_path / "q" / "sum.fits").exists() and not (tmp_path / "q" / "sum.fits.part").exists()
    server.archive.files["/files/ok.fits"] = b"B" * 5000
    _queue_one(catalog, server, tmp_path, "/files/ok.fits", checksum="md5:" + hashlib.md5(b"B" * 5000).hexdigest())
    fetch.run_queue(catalog.engine)
    assert _states(catalog)["ok.fits"] == ("done", None)


@pytest.mark.parametrize(
    "kind, message",
    [("dotdot", "member '../../escaped.txt' would land outside"), ("absolute", "has an absolute path"),
     ("link", "links to '/etc/passwd', outside")],
)
def test_a_malicious_tar_is_refused_and_nothing_extracted(catalog, server, tmp_path, kind, message):
    server.archive.files[f"/files/{kind}.tar"] = malicious_tar(kind)
    _queue_one(catalog, server, tmp_path, f"/files/{kind}.tar")
    fetch.run_queue(catalog.engine)
    state, error = _states(catalog)[f"{kind}.tar"]
    assert state == "failed" and message in error and "nothing extracted" in error
    assert not (tmp_path / "q" / "data").exists()  # not even the good member
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/obsarch-absolute-escape.txt").exists()


def test_a_good_tar_is_unpacked(catalog, server, tmp_path):
    server.archive.files["/files/0999999999.tar.gz"] = good_tar()
    _queue_one(catalog, server, tmp_path, "/files/0999999999.tar.gz")
    summary = fetch.run_queue(catalog.engine)
    assert summary.unpacked == 2
    assert sorted(p.name for p in (tmp_path / "q" / "0999999999").rglob("*.fits")) == ["a.fits", "b.fits"]
    assert not (tmp_path / "q" / "0999999999.tar.gz").exists()


def test_a_truncated_tar_is_refused_and_the_rest_go_on(catalog, server, tmp_path):
    """A tar.gz cut short raised a bare EOFError out of the queue: the run
    stopped, the files downloaded with it were never recorded and the tar
    stayed 'downloading'. Now it fails with the unpacker's line, the others
    are done, and a retry that gets the whole tar unpacks it."""
    whole = good_tar()
    server.archive.files["/files/0999999999.tar.gz"] = whole[:len(whole) // 2]
    server.archive.files["/files/ok.fits"] = b"B" * 5000
    _queue_one(catalog, server, tmp_path, "/files/0999999999.tar.gz")
    _queue_one(catalog, server, tmp_path, "/files/ok.fits")
    summary = fetch.run_queue(catalog.engine)
    assert summary.done == 1 and summary.unpacked == 0
    assert _states(catalog) == {"ok.fits": ("done", None), "0999999999.tar.gz": (
        "failed", "0999999999.tar.gz refused, nothing extracted: truncated: the gzip data end early")}
    assert not (tmp_path / "q" / "0999999999").exists()
    server.archive.files["/files/0999999999.tar.gz"] = whole
    assert fetch.retry_failed(catalog.engine) == 1
    assert fetch.run_queue(catalog.engine).unpacked == 2
    assert _states(catalog)["0999999999.tar.gz"] == ("done", None)


def test_fetch_with_a_truncated_tar_is_partial(url, server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "obsarch.toml"
    config.write_text("[archives]\n" + "".join(f'{k} = "{v}"\n' for k, v in server.config()["archives"].items()))
    obsarch(url, "init", config=config)
    whole = good_tar()
    server.archive.files["/FTP/xmm/data/0013140101/odf/extra.tar.gz"] = whole[:len(whole) // 2]
    partial = obsarch(url, "fetch", "xmm", "0013140101", code=3, config=config)
    assert "2 files downloaded" in partial.stdout and "2 exposures linked" in partial.stdout
    refused = "extra.tar.gz refused, nothing extracted: truncated: the gzip data end early"
    assert f"/FTP/xmm/data/0013140101/odf/extra.tar.gz: {refused}" in partial.stderr
    assert partial.stderr.splitlines()[-1].startswith("1 of 3 files failed: see `obsarch downloads`")
    row = obsarch(url, "downloads", "--format", "csv", config=config).stdout.splitlines()[1]
    assert ",failed,3,2," in row and row.endswith(f'"{refused}"')
    server.archive.files["/FTP/xmm/data/0013140101/odf/extra.tar.gz"] = whole
    again = obsarch(url, "fetch", "--retry-failed", config=config)
    assert "1 file downloaded" in again.stdout and "2 unpacked" in again.stdout


def test_downloads_run_a_bounded_number_at_once(catalog, server, tmp_path, monkeypatch):
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()
    real = fetch.download_file

    def counting(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(downloads, "download_file", counting)
    for i in range(8):
        server.archive.files[f"/files/n{i}.fits"] = b"x" * 100
        _queue_one(catalog, server, tmp_path, f"/files/n{i}.fits")
    assert fetch.run_queue(catalog.engine, parallel=3).done == 8
    assert peak[0] == 3


def test_eso_frames_with_their_calibrations(catalog, server, tmp_path):
    summary = fetch.fetch_eso(catalog.engine, "MUSE", target="NGC 6397", night="2014-07-27", with_calib=True,
                              dest=tmp_path / "data", config=server.config())
    assert summary.observations == 4 and summary.queue.done == 4 and summary.linked == 4
    frame = catalog.query("instrument == 'MUSE'", columns="frame_type", sort="frame_type")
    assert frame["frame_type"].tolist() == ["bias", "bias", "science", "science"]
    calselector = [form for m, path, form in server.archive.requests if path == "/calselector"]
    assert calselector and sorted(calselector[0]["dp_id"]) == ["MUSE.2014-07-28T01:10:11.001", "MUSE.2014-07-28T01:25:12.002"]


def test_sync_finds_and_queues_what_is_new(catalog, server, tmp_path):
    fetch.search(catalog.engine, "heasarc", "xmm", "NGC 5506", config=server.config())
    assert fetch.sync(catalog.engine, dest=tmp_path / "d", config=server.config()) == [("heasarc", "NGC 5506", 0)]
    server.archive.xmm_rows.append(("0822100101", "NGC 5506", 213.3121, -3.2075, 58600.0, 58600.5, 59000.0, 40000.0))
    server.archive.files["/FTP/xmm/data/0822100101/odf/new.fits"] = server.archive.files["/FTP/xmm/data/0013140101/odf/events.fits"]
    assert fetch.sync(catalog.engine, dest=tmp_path / "d", config=server.config()) == [("heasarc", "NGC 5506", 1)]
    states = {r["obsid"]: r["state"] for r in fetch.downloads_table(catalog.engine)}
    assert states["0822100101"] == "queued" and states["0013140101"] == "known"
    summary = fetch.fetch_queue(catalog.engine, config=server.config())
    assert summary.queue.done == 1 and summary.linked == 1


def test_archive_tour(url, server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "obsarch.toml"
    config.write_text("[archives]\n" + "".join(f'{k} = "{v}"\n' for k, v in server.config()["archives"].items()))

    def run(*args, code=0):
        return obsarch(url, *args, code=code, config=config)

    run("init")
    assert "3 observations, 3 new" in run("archive", "search", "heasarc", "--mission", "xmm", "--target", "NGC 5506").stderr
    out = run("fetch", "xmm", "0013140101", "0201830201", "0761220101").stdout
    assert "6 files downloaded" in out and "6 exposures linked" in out
    run("fetch", "nustar", "60061323002")
    out = run("fetch", "eso", "--instrument", "MUSE", "--target", "NGC 6397", "--night", "2014-07-27", "--with-calib").stdout
    assert "4 files downloaded" in out
    table = run("downloads", "--format", "csv").stdout
    assert "60061323002" in table and "done" in table
    assert "0 new observations" in run("sync").stdout
    assert "queued again" in run("fetch", "--retry-failed").stderr
    assert len(run("query", "obsid == '0761220101'", "--columns", "relpath", "--format", "csv").stdout.split()) == 3
    assert "fetch eso needs --instrument" in run("fetch", "eso", code=1).stderr
    assert "give the xmm observation ids" in run("fetch", "xmm", code=1).stderr


def test_mast_search_and_fetch(catalog, server, tmp_path):
    rows, new = fetch.search(catalog.engine, "mast", "hst", "NGC 5506", config=server.config())
    assert [r["obsid"] for r in rows] == ["icdm01010"] and rows[0]["instrument"] == "WFC3/IR" and new == 1
    summary = fetch.fetch_mast(catalog.engine, "HST", ["icdm01010"], dest=tmp_path / "data", config=server.config())
    assert summary.queue.done == 1 and summary.linked == 1  # the science product only, not the log
    assert catalog.query("telescope == 'HST'", columns="relpath")["relpath"].tolist() == ["24842601_flt.fits"]
    with pytest.raises(ObsarchError, match="not a known HST observation; run `obsarch archive search mast"):
        fetch.fetch_mast(catalog.engine, "HST", ["nope"], dest=tmp_path, config=server.config())


def test_fetch_exit_code_says_partial_or_nothing(url, server, tmp_path, monkeypatch):
    """Some files failing while others arrive is partial (3); every file
    failing is an error (1): the last line says how many, either way."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "obsarch.toml"
    config.write_text("[archives]\n" + "".join(f'{k} = "{v}"\n' for k, v in server.config()["archives"].items()))
    obsarch(url, "init", config=config)
    server.archive.fail_times["/FTP/xmm/data/0013140101/pps/spectrum.fits.gz"] = 99
    partial = obsarch(url, "fetch", "xmm", "0013140101", "--retries", "1", code=3, config=config)
    assert "1 file downloaded" in partial.stdout
    assert partial.stderr.splitlines()[-1].startswith("1 of 2 files failed: see `obsarch downloads`")
    again = obsarch(url, "fetch", "--retry-failed", "--retries", "1", code=1, config=config)
    assert "0 files downloaded" in again.stdout
    assert again.stderr.splitlines()[-1].startswith("1 of 1 files failed: see `obsarch downloads`")
