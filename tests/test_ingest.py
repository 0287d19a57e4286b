"""Ingest on both backends: incremental scans, history, bad input, crashes, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from factories import night_of_frames, write_frame
from sqlalchemy import func, select, update

from archive import ingest as ingest_module
from archive.exceptions import NotFoundError
from archive.ingest import move_root
from archive.models import Exposure, File, FileVersion, Hdu, HeaderCard, IngestError, IngestRun


def count(catalog, column, *where):
    with catalog.engine.connect() as conn:
        return conn.execute(select(func.count(column)).where(*where)).scalar_one()


def assert_consistent(catalog):
    """Every present file has its HDUs, cards and one exposure; nothing dangles."""
    with catalog.engine.connect() as conn:
        present = conn.execute(select(File.id).where(File.header_hash.is_not(None))).scalars().all()
        for file_id in present:
            hdus = conn.execute(select(func.count(), func.sum(Hdu.ncards)).where(Hdu.file_id == file_id)).one()
            cards = conn.execute(select(func.count()).where(HeaderCard.file_id == file_id)).scalar_one()
            exposures = conn.execute(select(func.count()).where(Exposure.file_id == file_id)).scalar_one()
            assert hdus[0] >= 1 and exposures == 1, file_id
            assert cards <= hdus[1], file_id
        orphans = conn.execute(
            select(func.count()).select_from(Exposure).outerjoin(File, File.id == Exposure.file_id).where(File.id.is_(None))
        ).scalar_one()
        assert orphans == 0


def test_first_scan_then_unchanged_rescan_reads_nothing(catalog, tmp_path, rng, monkeypatch):
    night_of_frames(tmp_path / "night", rng)
    first = catalog.ingest([tmp_path / "night"])
    assert (first.new, first.changed, first.unchanged, first.missing, first.failed) == (24, 0, 0, 0, 0)
    assert count(catalog, Exposure.id) == 24

    def must_not_read(*args):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(ingest_module, "read_headers", must_not_read)
    second = catalog.ingest([tmp_path / "night"])
    assert (second.new, second.changed, second.unchanged, second.missing, second.failed) == (0, 0, 24, 0, 0)
    with catalog.engine.connect() as conn:
        runs = conn.execute(select(IngestRun.state, IngestRun.n_new, IngestRun.n_unchanged).order_by(IngestRun.id)).all()
    assert [tuple(r) for r in runs] == [("done", 24, 0), ("done", 0, 24)]
    assert_consistent(catalog)


def test_normalized_values_are_stored(catalog, tmp_path, rng):
    night_of_frames(tmp_path, rng)
    catalog.ingest([tmp_path])
    frame = catalog.query("band == 'V' and frame_type == 'science'", columns="frame_number,exptime,night,readout_mode", sort="frame_number")
    assert frame["frame_number"].tolist() == [3868, 3869, 3870, 3871]
    assert frame["exptime"].tolist() == [60.0, 90.0, 120.0, 150.0]
    assert set(frame["night"]) == {"2017-08-15"}
    assert set(frame["readout_mode"]) == {"SCI1.0"}


def test_changed_file_is_reread_and_its_old_headers_kept(catalog, tmp_path, rng):
    path = write_frame(tmp_path / "a-0001.fits", rng, {"EXPTIME": 30.0})
    catalog.ingest([tmp_path])
    exposure_id = catalog.resolve("1")
    time.sleep(0.01)
    write_frame(path, rng, {"EXPTIME": 45.0, "OBSERVER": "me"})
    summary = catalog.ingest([tmp_path])
    assert (summary.new, summary.changed, summary.unchanged) == (0, 1, 0)
    assert catalog.resolve("1") == exposure_id  # flags and groups keep pointing at it
    assert catalog.query("exptime == 45")["id"].tolist() == [exposure_id]
    assert catalog.query("hdr['OBSERVER'] == 'me'")["id"].tolist() == [exposure_id]
    with catalog.engine.connect() as conn:
        version, headers = conn.execute(select(FileVersion.version, FileVersion.headers_json)).one()
        current = conn.execute(select(File.version)).scalar_one()
    assert (version, current) == (1, 2)
    old = {card[1]: card[2] for card in json.loads(headers)["0"]}
    assert old["EXPTIME"] == "30.0" and "OBSERVER" not in old
    assert_consistent(catalog)


@pytest.mark.parametrize("bulk", [False, True], ids=["indexes kept", "bulk"])
def test_the_kept_headers_are_the_stored_cards_in_order(catalog, tmp_path, rng, monkeypatch, bulk):
    """The database makes each replaced file's headers into JSON: every HDU
    of every file re-read, every card in order, with its text and comment
    (none for a card without one), as the cards stood."""
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 1 if bulk else 10**9)
    for i in range(3):
        primary = fits.PrimaryHDU()
        primary.header["OBJECT"] = (f"field {i}", "what was observed")
        primary.header["EXPTIME"] = 30.0 + i
        primary.header["NOCOMM"] = "plain"
        primary.header["HISTORY"] = "made by a test"
        primary.header["COMMENT"] = "a 'quoted' comment, with \\ and \"double\" quotes"
        extensions = [fits.ImageHDU(np.zeros((2, 2), dtype=np.int16), name=f"CHIP{k}") for k in (1, 2)]
        extensions[1].header["GAIN"] = (1.5 + i, "e-/ADU")
        fits.HDUList([primary, *extensions]).writeto(tmp_path / f"f{i}.fits")
    catalog.ingest([tmp_path])

    def stored() -> dict[int, dict[str, list]]:
        with catalog.engine.connect() as conn:
            rows = conn.execute(select(HeaderCard.file_id, HeaderCard.hdu_index, HeaderCard.position, HeaderCard.keyword,
                                       HeaderCard.value_text, HeaderCard.comment)
                                .order_by(HeaderCard.file_id, HeaderCard.hdu_index, HeaderCard.position)).all()
        found: dict[int, dict[str, list]] = {}
        for file_id, hdu, *card in rows:
            found.setdefault(file_id, {}).setdefault(str(hdu), []).append(card)
        return found

    before = stored()
    assert all(len(hdus) == 3 for hdus in before.values()) and len(before) == 3
    with catalog.engine.begin() as conn:  # each HDU's first card to the end of PostgreSQL's heap: order comes from the query
        conn.execute(update(HeaderCard).where(HeaderCard.position == 0).values(comment=HeaderCard.comment))
    time.sleep(0.01)
    for i in range(3):
        with fits.open(tmp_path / f"f{i}.fits", mode="update") as hdus:
            hdus[0].header["EXPTIME"] = 99.0
    assert catalog.ingest([tmp_path]).changed == 3
    with catalog.engine.connect() as conn:
        kept = {file_id: json.loads(text) for file_id, text in conn.execute(select(FileVersion.file_id, FileVersion.headers_json))}
    assert kept == before
    assert all(list(headers) == ["0", "1", "2"] for headers in kept.values())
    assert_consistent(catalog)
    if catalog.engine.dialect.name == "sqlite":  # the cards reach each HDU's aggregate in key order, with no sort between
        with catalog.engine.connect() as conn:
            hdus = ingest_module._headers_json(conn, sorted(kept)).element.get_final_froms()[0]
            plan = [row[3] for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(select(hdus).compile(conn, compile_kwargs={"literal_binds": True})))]
        assert any("USING PRIMARY KEY" in step for step in plan) and not any("TEMP B-TREE" in step for step in plan), plan


def test_a_file_with_the_same_header_bytes_keeps_its_cards(catalog, tmp_path, rng):
    """A file touched, or its pixels rewritten under the same header, is
    changed: size, mtime and version move (metrics of its pixels are matched
    to the version: a review found them kept as up to date when the version
    stayed), its exposure is normalized again, but its cards stay and no
    copy of identical headers is kept. Re-reading 3,000 touched files took
    11 s (a version archived and 150 cards replaced each), a first read 1.2 s."""
    path = write_frame(tmp_path / "a-0001.fits", rng, {"EXPTIME": 30.0})
    catalog.ingest([tmp_path])
    with catalog.engine.connect() as conn:
        before = conn.execute(select(HeaderCard.keyword, HeaderCard.value_text).order_by(HeaderCard.position)).all()
        file_before = conn.execute(select(File.version, File.size, File.mtime_ns, File.header_hash)).one()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert catalog.ingest([tmp_path]).changed == 1
    with fits.open(path, mode="update") as hdul:  # other pixels, the header bytes as they were
        hdul[0].data = hdul[0].data + 1
    assert catalog.ingest([tmp_path]).changed == 1
    with catalog.engine.connect() as conn:
        assert conn.execute(select(HeaderCard.keyword, HeaderCard.value_text).order_by(HeaderCard.position)).all() == before
        version, size, mtime_ns, header_hash = conn.execute(select(File.version, File.size, File.mtime_ns, File.header_hash)).one()
        assert conn.execute(select(func.count()).select_from(FileVersion)).scalar() == 0
    assert (version, header_hash) == (3, file_before[3]) and mtime_ns == path.stat().st_mtime_ns != file_before[2]
    assert catalog.query("exptime == 30")["id"].tolist() == [catalog.resolve("1")]
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 9_000_000))  # touched, read with another config
    catalog.ingest([tmp_path], config={"keywords": {"frame_number": {"filename_pattern": r"a-(\d\d)\d\d\.fits$"}}})
    assert catalog.query("id > 0", columns="frame_number")["frame_number"].tolist() == [0]
    assert_consistent(catalog)


def test_one_scan_replaces_changed_touched_and_broken_files_together(catalog, tmp_path, rng):
    """The stored files a chunk re-reads are replaced in a few statements for
    all of them: each still ends as its own case says (headers changed: a
    version kept; touched: nothing kept; now unreadable: its last good
    headers kept, the reason said), whatever the others in the chunk are."""
    paths = {name: write_frame(tmp_path / f"{name}-000{i}.fits", rng, {"OBSERVER": name})
             for i, name in enumerate(["changed", "touched", "broken", "same"], start=1)}
    catalog.ingest([tmp_path])
    time.sleep(0.01)
    write_frame(paths["changed"], rng, {"OBSERVER": "someone else"})
    stat = paths["touched"].stat()
    os.utime(paths["touched"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    paths["broken"].write_bytes(paths["broken"].read_bytes()[:100])
    write_frame(tmp_path / "new-0005.fits", rng, {"OBSERVER": "new"})
    summary = catalog.ingest([tmp_path])
    assert (summary.new, summary.changed, summary.unchanged, summary.failed) == (1, 2, 1, 1)
    observers = catalog.query("frame_number > 0", columns="frame_number,hdr['OBSERVER']", sort="frame_number")
    assert observers["hdr['OBSERVER']"].tolist() == ["someone else", "touched", "broken", "same", "new"]
    with catalog.engine.connect() as conn:
        versions = dict(conn.execute(select(File.relpath, File.version)).all())
        kept = conn.execute(select(FileVersion.file_id, FileVersion.version)).all()
        status = dict(conn.execute(select(File.relpath, File.status)).all())
    assert versions == {"changed-0001.fits": 2, "touched-0002.fits": 2, "broken-0003.fits": 1, "same-0004.fits": 1,
                        "new-0005.fits": 1}
    assert kept == [(catalog.resolve("1"), 1)]
    assert status["broken-0003.fits"] == "unreadable" and status["touched-0002.fits"] == "present"
    assert_consistent(catalog)


def test_vanished_file_is_marked_missing_never_deleted(catalog, tmp_path, rng):
    paths = night_of_frames(tmp_path, rng)
    catalog.ingest([tmp_path])
    content = paths[0].read_bytes()
    paths[0].unlink()
    summary = catalog.ingest([tmp_path])
    assert (summary.missing, summary.unchanged) == (1, 23)
    assert catalog.query("status == 'missing'")["frame_number"].tolist() == [3852]
    assert count(catalog, Exposure.id) == 24
    paths[0].write_bytes(content)
    again = catalog.ingest([tmp_path])
    assert (again.changed, again.missing) == (1, 0)
    assert catalog.query("status == 'missing'").empty


def test_scanning_a_subdirectory_stays_in_its_root(catalog, tmp_path, rng):
    write_frame(tmp_path / "a" / "f1.fits", rng)
    write_frame(tmp_path / "b" / "f2.fits", rng)
    catalog.ingest([tmp_path])
    (tmp_path / "b" / "f2.fits").unlink()
    summary = catalog.ingest([tmp_path / "a"])
    assert (summary.unchanged, summary.missing) == (1, 0)  # b/ was not scanned
    assert catalog.roots()["path"].tolist() == [str(tmp_path.resolve())]
    assert sorted(catalog.query()["path"]) == [f"{tmp_path.resolve()}/a/f1.fits", f"{tmp_path.resolve()}/b/f2.fits"]


def test_single_file_can_be_ingested(catalog, tmp_path, rng):
    path = write_frame(tmp_path / "one.fits", rng)
    assert catalog.ingest([path]).new == 1
    assert catalog.ingest([path]).unchanged == 1


def test_moved_tree_is_relocated_without_rereading(catalog, tmp_path, rng, monkeypatch):
    night_of_frames(tmp_path / "old", rng)
    catalog.ingest([tmp_path / "old"])
    (tmp_path / "old").rename(tmp_path / "new")
    assert move_root(catalog.engine, tmp_path / "old", tmp_path / "new") == 24
    monkeypatch.setattr(ingest_module, "read_headers", lambda *a: pytest.fail("re-read after a move"))
    summary = catalog.ingest([tmp_path / "new"])
    assert (summary.unchanged, summary.new, summary.missing) == (24, 0, 0)
    assert all(p.startswith(str((tmp_path / "new").resolve())) for p in catalog.query()["path"])


@pytest.mark.parametrize(
    "old, new, message",
    [("nowhere", "here", "not a root of this catalog"), ("root", "absent", "not a directory")],
)
def test_bad_root_moves_are_refused(catalog, tmp_path, rng, old, new, message):
    write_frame(tmp_path / "root" / "f.fits", rng)
    catalog.ingest([tmp_path / "root"])
    (tmp_path / "here").mkdir()
    with pytest.raises(NotFoundError, match=message):
        move_root(catalog.engine, tmp_path / old, tmp_path / new)


def test_missing_path_is_refused(catalog, tmp_path):
    with pytest.raises(NotFoundError, match="no such file or directory"):
        catalog.ingest([tmp_path / "nope"])


def test_many_files_are_read_in_worker_processes(catalog, tmp_path, rng):
    for i in range(80):
        write_frame(tmp_path / f"f{i:04d}.fits", rng, {"EXPTIME": float(i)}, shape=(4, 4))
    summary = catalog.ingest([tmp_path], workers=2)
    assert summary.new == 80
    assert catalog.query("exptime >= 70")["exptime"].tolist() == [float(i) for i in range(70, 80)]
    assert_consistent(catalog)


# -- bad input: recorded with a reason, the scan goes on, nothing is lost ----------


def _bad_tree(tmp_path: Path, rng) -> dict[str, str]:
    """Files of every kind of bad input, and the reason each must get."""
    bad = tmp_path / "bad"
    write_frame(bad / "good.fits", rng)
    (bad / "empty.fits").write_bytes(b"")
    (bad / "notes.fits").write_text("not a fits file\n")
    truncated = write_frame(bad / "truncated.fits", rng, shape=(64, 64)).read_bytes()
    (bad / "truncated.fits").write_bytes(truncated[:-4000])
    write_frame(bad / "invalid-card.fits", rng, {"AIRMASS": None})
    data = (bad / "invalid-card.fits").read_bytes()
    at = data.index(b"READOUTM=")
    (bad / "invalid-card.fits").write_bytes(data[:at] + b"AIRMASS = INDEF".ljust(80) + data[at + 80 :])
    os.symlink(bad / "gone.fits", bad / "dangling.fits")
    os.mkfifo(bad / "pipe.fits")
    write_frame(Path(os.fsdecode(bytes(bad) + b"/caf\xe9.fits")), rng)
    return {
        "empty.fits": "empty file",
        "notes.fits": "not a FITS file",
        "truncated.fits": "truncated: HDU 0's data end at byte",
        "dangling.fits": "broken symbolic link",
        "pipe.fits": "not a regular file",
        "caf\\xe9.fits": "file name is not valid UTF-8",
    }


def test_every_bad_file_is_recorded_and_the_scan_goes_on(catalog, tmp_path, rng):
    expected = _bad_tree(tmp_path, rng)
    summary = catalog.ingest([tmp_path / "bad"])
    assert (summary.new, summary.failed) == (2, 6)
    errors = catalog.errors()
    reasons = {Path(p).name: (status, reason) for p, status, reason in errors.itertuples(index=False)}
    for name, reason in expected.items():
        assert reasons[name][0] == "unreadable" and reason in reasons[name][1], name
    assert reasons["invalid-card.fits"][0] == "present"
    assert "invalid card kept as text: AIRMASS = 'INDEF'" in reasons["invalid-card.fits"][1]
    assert catalog.query("hdr['AIRMASS'] == 'INDEF'")["path"].str.endswith("invalid-card.fits").all()
    with catalog.engine.connect() as conn:
        logged = conn.execute(select(func.count()).select_from(IngestError)).scalar_one()
    assert logged == 7


def test_unreadable_file_is_recorded(catalog, tmp_path, rng, monkeypatch):
    write_frame(tmp_path / "locked.fits", rng)
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("locked.fits"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("archive.headers.open", refuse, raising=False)
    catalog.ingest([tmp_path])
    assert catalog.errors()["reason"].tolist() == ["cannot open: Permission denied"]


def test_a_good_file_gone_bad_keeps_what_was_stored(catalog, tmp_path, rng):
    path = write_frame(tmp_path / "f-0007.fits", rng, {"OBJECT": "M31"}, shape=(64, 64))
    catalog.ingest([tmp_path])
    path.write_bytes(path.read_bytes()[:-4000])
    summary = catalog.ingest([tmp_path])
    assert summary.failed == 1
    frame = catalog.query("hdr['OBJECT'] == 'M31'", columns="frame_number,object,status")
    assert frame.values.tolist() == [[7, "M31", "unreadable"]]
    again = catalog.ingest([tmp_path])  # still bad: tried again, still kept
    assert again.failed == 1 and len(catalog.query("object == 'M31'")) == 1
    write_frame(path, rng, {"OBJECT": "M31"}, shape=(64, 64))
    fixed = catalog.ingest([tmp_path])
    assert fixed.changed == 1 and catalog.errors().empty


def test_a_bad_file_gone_says_its_reason_is_of_its_last_reading(catalog, tmp_path, rng):
    """errors listed a deleted file as 'missing' beside 'truncated: ...', as if
    it were missing for being cut."""
    path = write_frame(tmp_path / "f-0007.fits", rng, shape=(64, 64))
    path.write_bytes(path.read_bytes()[:-4000])
    catalog.ingest([tmp_path])
    (reason,) = catalog.errors()["reason"].tolist()
    path.unlink()
    catalog.ingest([tmp_path])
    assert catalog.errors()[["status", "reason"]].values.tolist() == [["missing", f"gone from disk; when last read: {reason}"]]


def test_ingest_twice_leaves_the_same_catalog(catalog, tmp_path, rng):
    night_of_frames(tmp_path, rng)
    catalog.ingest([tmp_path])
    columns = "id,frame_number,band,exptime,path,header_hash,version,status"
    before = catalog.query(columns=columns)
    catalog.ingest([tmp_path])
    after = catalog.query(columns=columns)
    assert before.equals(after)


# -- crashes and concurrency (separate processes) -----------------------------------

INGEST_SCRIPT = "import sys; from archive.catalog import Catalog; Catalog(sys.argv[1]).ingest([sys.argv[2]], workers=2)"


def _many_frames(directory: Path, rng, n: int) -> None:
    for i in range(n):
        write_frame(directory / f"f{i:05d}.fits", rng, {"EXPTIME": float(i)}, shape=(4, 4))


def _touch(paths) -> None:
    """A new mtime, the same bytes."""
    for path in paths:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))


def _change(paths, observer: str) -> None:
    """A header changed: its OBSERVER card."""
    for path in paths:
        with fits.open(path, mode="update") as hdus:
            hdus[0].header["OBSERVER"] = observer


def _count_drops(monkeypatch) -> list:
    """A list that takes a 1 each time the card indexes are dropped for a bulk load."""
    dropped, real_drop = [], ingest_module._drop_card_indexes
    monkeypatch.setattr(ingest_module, "_drop_card_indexes", lambda engine: (dropped.append(1), real_drop(engine)))
    return dropped


def _spawn(url: str, directory: Path, batch: int) -> subprocess.Popen:
    env = {**os.environ, "OBSARCH_INGEST_BATCH": str(batch)}
    return subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, url, str(directory)], env=env,
                            start_new_session=True, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_ingest_killed_half_way_leaves_a_consistent_catalog(catalog, url, tmp_path, rng):
    _many_frames(tmp_path / "data", rng, 400)
    process = _spawn(url, tmp_path / "data", batch=10)
    deadline = time.time() + 60
    while count(catalog, File.id) < 30:
        assert time.time() < deadline and process.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stored = count(catalog, File.id)
    assert 30 <= stored < 400
    assert_consistent(catalog)
    summary = catalog.ingest([tmp_path / "data"])
    assert summary.new == 400 - stored and summary.unchanged == stored
    assert count(catalog, Exposure.id) == 400
    assert_consistent(catalog)
    with catalog.engine.connect() as conn:
        states = conn.execute(select(IngestRun.state).order_by(IngestRun.id)).scalars().all()
    assert states == ["interrupted", "done"]


@pytest.mark.slow
def test_two_ingests_at_once_both_finish_correctly(catalog, url, tmp_path, rng):
    _many_frames(tmp_path / "data", rng, 300)
    first, second = _spawn(url, tmp_path / "data", 25), _spawn(url, tmp_path / "data", 25)
    for process in (first, second):
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr.decode()[-2000:]
    assert count(catalog, File.id) == 300
    assert count(catalog, Exposure.id) == 300
    assert_consistent(catalog)
    with catalog.engine.connect() as conn:
        runs = conn.execute(select(IngestRun.state, IngestRun.n_new, IngestRun.n_unchanged)).all()
    assert [r.state for r in runs] == ["done", "done"]
    assert sum(r.n_new for r in runs) == 300


def _card_index_names(catalog) -> set[str]:
    from sqlalchemy import inspect

    with catalog.engine.connect() as conn:
        return {index["name"] for index in inspect(conn).get_indexes("header_cards")}


EXPECTED_CARD_INDEXES = {"ix_header_cards_num", "ix_header_cards_text", "ix_header_cards_long"}


def test_bulk_load_builds_the_card_indexes_after(catalog, tmp_path, rng, monkeypatch):
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    dropped = _count_drops(monkeypatch)
    _many_frames(tmp_path / "data", rng, 30)
    assert catalog.ingest([tmp_path / "data"]).new == 30
    assert dropped and _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert catalog.query("hdr['EXPTIME'] between 10 and 12")["exptime"].tolist() == [10.0, 11.0, 12.0]
    _many_frames(tmp_path / "more", rng, 5)
    dropped.clear()
    catalog.ingest([tmp_path / "more"])  # small next to the catalog: indexes stay
    assert not dropped


def test_a_re_read_of_much_of_the_catalog_is_a_bulk_load_only_when_headers_changed(catalog, backend, tmp_path, rng, monkeypatch):
    """Files re-read with their headers changed, a quarter of the catalog's
    files or more, are loaded with the card indexes dropped and built after
    (on PostgreSQL the primary key stays: the old cards are found by it);
    the same files only touched write no card and keep the indexes, and so
    does a re-read of fewer. The load turns bulk at the first chunk by which
    the chunks so far tell that enough of the files read write cards."""
    from test_migrations import schema_diff

    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    monkeypatch.setattr(ingest_module, "BATCH_FILES", 4)
    events = []
    real_drop, real_store = ingest_module._drop_card_constraints, ingest_module._store_chunk
    monkeypatch.setattr(ingest_module, "_drop_card_constraints", lambda engine, **kw: (events.append(kw), real_drop(engine, **kw)))
    monkeypatch.setattr(ingest_module, "_store_chunk", lambda *a: (events.append("chunk"), real_store(*a)))
    _many_frames(tmp_path / "data", rng, 40)
    assert catalog.ingest([tmp_path / "data"]).new == 40
    assert events[0] == {"keep_primary": False}  # a first ingest: the keys go too (PostgreSQL)
    paths = sorted((tmp_path / "data").iterdir())

    def reread(changed: int) -> list:
        events.clear()
        assert catalog.ingest([tmp_path / "data"]).changed == changed
        return [e if e == "chunk" else "drop" for e in events]

    _touch(paths[:12])
    assert reread(12) == ["chunk"] * 3  # touched: the same header bytes, no card written
    _change(paths[:12], "a")
    assert reread(12) == ["drop", "chunk", "chunk", "chunk"] and events[0] == {"keep_primary": True}
    _change(paths[:9], "b")  # 9 of 40: under a quarter
    assert reread(9) == ["chunk"] * 3
    _touch(paths[:4])
    _change(paths[4:16], "c")  # 12 of the 16 read: told by the third chunk
    assert reread(16) == ["chunk", "chunk", "drop", "chunk", "chunk"]
    assert _card_index_names(catalog) == EXPECTED_CARD_INDEXES and schema_diff(catalog.engine) == []
    assert len(catalog.query("hdr['OBSERVER'] == 'c'")) == 12 and len(catalog.query("hdr['OBSERVER'] == 'b'")) == 4
    assert count(catalog, FileVersion.id) == 12 + 9 + 12
    assert_consistent(catalog)


def test_a_re_read_turns_bulk_only_once_a_tenth_of_the_stored_files_tell_it(catalog, tmp_path, rng, monkeypatch):
    """Files are read in name order, and the first may all be one
    reprocessed night: one changed file read first, the 39 after it only
    touched, keeps the indexes (it turned the load bulk when one chunk
    decided). The scan's own errors are no chunk read, and tell nothing."""
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    monkeypatch.setattr(ingest_module, "BATCH_FILES", 1)
    _many_frames(tmp_path / "data", rng, 40)
    catalog.ingest([tmp_path / "data"])
    dropped = _count_drops(monkeypatch)
    paths = sorted((tmp_path / "data").iterdir())
    _change(paths[:1], "a")
    _touch(paths[1:])
    assert catalog.ingest([tmp_path / "data"]).changed == 40
    assert not dropped and _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    _change(paths[:4], "b")  # 4 of the first 4 (a tenth): all 40 may have changed
    _touch(paths[4:])
    assert catalog.ingest([tmp_path / "data"]).changed == 40
    assert dropped == [1] and _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert len(catalog.query("hdr['OBSERVER'] == 'b'")) == 4


def test_the_chunks_read_while_the_bulk_choice_waits_are_stored_after_it(catalog, backend, tmp_path, rng, monkeypatch):
    """A re-read that turns bulk once a tenth of its stored files is seen
    holds the chunks read before and stores them bulk too; not chunks whose
    cards are Python tuples (SQLite's, read in this process: ~75 KB a file)."""
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    monkeypatch.setattr(ingest_module, "BATCH_FILES", 1)
    monkeypatch.setattr(ingest_module, "_IN_PROCESS_BELOW", 0)  # read by the pool, as a real re-read is
    _many_frames(tmp_path / "data", rng, 40)
    catalog.ingest([tmp_path / "data"])
    events = []
    real_drop, real_store = ingest_module._drop_card_indexes, ingest_module._store_chunk
    monkeypatch.setattr(ingest_module, "_drop_card_indexes", lambda engine: (events.append("drop"), real_drop(engine)))
    monkeypatch.setattr(ingest_module, "_store_chunk", lambda *a: (events.append("chunk"), real_store(*a)))
    paths = sorted((tmp_path / "data").iterdir())

    def change_all(observer, **options):
        events.clear()
        _change(paths, observer)
        assert catalog.ingest([tmp_path / "data"], **options).changed == 40

    change_all("a")
    assert events == ["drop"] + ["chunk"] * 40  # chunks 1-3 held, chunk 4 completes the tenth
    change_all("b", workers=1)  # read here: SQLite's cards are tuples, PostgreSQL's COPY text
    assert events == (["chunk"] * 3 + ["drop"] + ["chunk"] * 37 if backend == "sqlite" else ["drop"] + ["chunk"] * 40)
    assert len(catalog.query("hdr['OBSERVER'] == 'b'")) == 40 and _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert count(catalog, FileVersion.id) == 80
    assert_consistent(catalog)


def test_the_scans_own_errors_neither_dilute_the_bulk_choice_nor_keep_the_primary_key(catalog, tmp_path, rng, monkeypatch):
    """Files the scan cannot take (30 pipes named .fits, stored as errors)
    are stored again before anything is read: they write no card, and tell
    nothing of the files read (24 changed of 70 stored turn the load bulk with them
    there too). A stored file among them is no file read again: PostgreSQL
    drops its primary key for a load of new files."""
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    monkeypatch.setattr(ingest_module, "BATCH_FILES", 4)
    _many_frames(tmp_path / "data", rng, 40)
    for i in range(30):
        os.mkfifo(tmp_path / "data" / f"a{i:02d}.fits")
    catalog.ingest([tmp_path / "data"])
    drops = []
    real_drop = ingest_module._drop_card_constraints
    monkeypatch.setattr(ingest_module, "_drop_card_constraints", lambda engine, **kw: (drops.append(kw), real_drop(engine, **kw)))
    _change(sorted((tmp_path / "data").glob("f*.fits"))[:24], "a")
    summary = catalog.ingest([tmp_path / "data"])
    assert (summary.changed, summary.failed, drops) == (24, 30, [{"keep_primary": True}])
    drops.clear()
    (tmp_path / "data" / "f00000.fits").unlink()
    os.mkfifo(tmp_path / "data" / "f00000.fits")  # stored, and now a scan error
    _many_frames(tmp_path / "more", rng, 80)
    for path in (tmp_path / "more").iterdir():
        path.rename(tmp_path / "data" / f"n{path.name}")
    summary = catalog.ingest([tmp_path / "data"])
    assert (summary.new, summary.failed, drops) == (80, 31, [{"keep_primary": False}])
    assert _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert_consistent(catalog)


def test_stored_files_that_no_longer_read_keep_the_indexes(catalog, tmp_path, rng, monkeypatch):
    """A stored file that now fails to read keeps its cards: it writes none,
    and 40 of them (a truncated copy of the tree) are no bulk load."""
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    _many_frames(tmp_path / "data", rng, 40)
    catalog.ingest([tmp_path / "data"])
    dropped = _count_drops(monkeypatch)
    for path in (tmp_path / "data").iterdir():
        path.write_bytes(b"not a FITS file at all")
    assert catalog.ingest([tmp_path / "data"]).failed == 40
    assert not dropped and count(catalog, HeaderCard.file_id) > 0


def test_an_interrupted_chunk_is_not_counted(catalog, tmp_path, rng, monkeypatch):
    """A Ctrl-C inside a chunk's transaction rolls the chunk back, and its
    files out of the run's counts: the record says what was stored."""
    monkeypatch.setattr(ingest_module, "BATCH_FILES", 5)
    _many_frames(tmp_path / "data", rng, 10)
    flushes, real_flush = [], ingest_module._Rows.flush

    def flush(self, conn, cards):
        flushes.append(1)
        if len(flushes) == 2:
            raise KeyboardInterrupt
        real_flush(self, conn, cards)

    monkeypatch.setattr(ingest_module._Rows, "flush", flush)
    with pytest.raises(KeyboardInterrupt):
        catalog.ingest([tmp_path / "data"], workers=1)
    with catalog.engine.connect() as conn:
        run = conn.execute(select(IngestRun.state, IngestRun.n_new, IngestRun.n_failed)).one()
    assert tuple(run) == ("interrupted", 5, 0) and count(catalog, File.id) == 5
    monkeypatch.setattr(ingest_module._Rows, "flush", real_flush)
    again = catalog.ingest([tmp_path / "data"])
    assert (again.new, again.unchanged) == (5, 5)
    assert_consistent(catalog)


def test_an_interrupt_while_the_indexes_are_built_again_keeps_the_run_and_its_counts(catalog, tmp_path, rng, monkeypatch):
    """Every file of a bulk load stored, a Ctrl-C while the card indexes are
    built again ends the run as interrupted with its counts and says so;
    the next ingest builds the indexes."""
    from test_migrations import schema_diff

    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    _many_frames(tmp_path / "data", rng, 12)
    calls, real_ensure = [], ingest_module.ensure_card_indexes

    def ensure(engine):
        calls.append(1)
        if len(calls) == 2:  # the first is the run's check before it starts
            raise KeyboardInterrupt
        real_ensure(engine)

    monkeypatch.setattr(ingest_module, "ensure_card_indexes", ensure)
    with pytest.raises(KeyboardInterrupt):
        catalog.ingest([tmp_path / "data"])
    assert len(calls) == 2  # not made again on the way out: the person asked to stop
    with catalog.engine.connect() as conn:
        state, new, error = conn.execute(select(IngestRun.state, IngestRun.n_new, IngestRun.error)).one()
    assert (state, new) == ("interrupted", 12)
    assert error == "KeyboardInterrupt: ; every file was stored, and the next ingest builds the card indexes again"
    assert _card_index_names(catalog) != EXPECTED_CARD_INDEXES
    monkeypatch.setattr(ingest_module, "ensure_card_indexes", real_ensure)
    again = catalog.ingest([tmp_path / "data"])
    assert again.unchanged == 12 and _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert schema_diff(catalog.engine) == []
    assert len(catalog.query("hdr['EXPTIME'] < 3")) == 3


def test_a_path_given_twice_is_scanned_once(catalog, tmp_path, rng):
    """`obsarch ingest night night` or `night night/f00000.fits` (a shell
    glob): each file is counted once, and a changed one takes one version."""
    _many_frames(tmp_path / "night", rng, 3)
    first = catalog.ingest([tmp_path / "night", tmp_path / "night", tmp_path / "night" / "f00000.fits"])
    assert (first.new, first.unchanged) == (3, 0)
    with fits.open(tmp_path / "night" / "f00001.fits", mode="update") as hdus:
        hdus[0].header["OBSERVER"] = "me"
    again = catalog.ingest([tmp_path / "night" / "f00001.fits", tmp_path / "night"])
    assert (again.changed, again.unchanged) == (1, 2)
    with catalog.engine.connect() as conn:
        versions = dict(conn.execute(select(File.relpath, File.version)).all())
    assert versions == {"f00000.fits": 1, "f00001.fits": 2, "f00002.fits": 1}
    # a file named that the scan of its directory would not take is read as named
    (tmp_path / "night" / "f00000.fits").rename(tmp_path / "night" / "f00000.raw")
    named = catalog.ingest([tmp_path / "night", tmp_path / "night" / "f00000.raw"])
    assert (named.new, named.missing, named.unchanged) == (1, 1, 2)


@pytest.mark.slow
def test_bulk_load_killed_half_way_gets_its_indexes_back(catalog, url, tmp_path, rng):
    from test_migrations import schema_diff

    _many_frames(tmp_path / "data", rng, 400)
    env_process = subprocess.Popen(
        [sys.executable, "-c", INGEST_SCRIPT, url, str(tmp_path / "data")],
        env={**os.environ, "OBSARCH_INGEST_BATCH": "10", "OBSARCH_BULK_MIN_FILES": "100"}, start_new_session=True,
    )
    deadline = time.time() + 60
    while count(catalog, File.id) < 30:
        assert time.time() < deadline and env_process.poll() is None
        time.sleep(0.02)
    os.killpg(env_process.pid, signal.SIGKILL)
    env_process.wait()
    assert _card_index_names(catalog) == set()  # killed mid-load: the indexes are gone
    assert_consistent(catalog)
    catalog.ingest([tmp_path / "data"])
    assert _card_index_names(catalog) == EXPECTED_CARD_INDEXES
    assert schema_diff(catalog.engine) == []
    assert count(catalog, Exposure.id) == 400
