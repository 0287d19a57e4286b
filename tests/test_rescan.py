"""The re-scan's compiled path (archive/_scan.pyx) settles only what the
Python path would call unchanged; everything else it hands back. Both paths
must plan the same scan of a tree with every odd kind of entry. Both backends."""

from __future__ import annotations

import os

import pytest
from factories import missing, write_frame

from archive import ingest


def _odd_tree(root, rng):
    for name in ("a.fits", "b.fit", "UPPER.FITS", "c.fits.gz.fits", "sub/d.fits", "sub/deeper/e.fits", "changed.fits",
                 "touched.fits", "gone.fits", "é.fits"):
        write_frame(root / name, rng, {})
    (root / "notes.txt").write_text("not FITS")
    (root / "link.fits").symlink_to(root / "a.fits")
    (root / "broken.fits").symlink_to(root / "nowhere.fits")
    (root / "dirlink").symlink_to(root / "sub")
    os.mkfifo(root / "pipe.fits")
    (root / "empty.fits").write_bytes(b"")


def _settled(root) -> None:
    """Date the directories of ``root`` a minute back: the read-ahead keeps
    no listing of a directory changed in the last seconds (prescan.RACY_NS)."""
    import time

    old = time.time_ns() - 60_000_000_000
    for directory, _, _ in os.walk(root):
        os.utime(directory, ns=(old, old))


def _stored_tree(catalog, tmp_path, rng):
    """tree/a.fits and tree/sub/b.fits, ingested, their directories dated back (:func:`_settled`)."""
    root = tmp_path / "tree"
    write_frame(root / "a.fits", rng, {})
    write_frame(root / "sub" / "b.fits", rng, {})
    catalog.ingest([root])
    _settled(root)
    return root


def _require_compiled() -> None:
    """The compiled re-scan; in CI it must have been built."""
    if ingest._settle_unchanged is None:
        missing("the compiled re-scan (archive/_scan.pyx) was not built; the Python one is used")


def _plan(catalog, root):
    summary = ingest.IngestSummary(run_id=0)
    to_read, bad, known, gone = ingest._plan(catalog.engine, [root], summary)
    return ([(s.relpath, s.size, s.mtime_ns) for s in to_read], [(s.relpath, s.error) for s in bad],
            known, sorted(gone), summary.unchanged, summary.ignored)


def test_compiled_and_python_rescans_plan_the_same(catalog, tmp_path, rng, monkeypatch):
    _require_compiled()
    root = tmp_path / "tree"
    _odd_tree(root, rng)
    catalog.ingest([root])
    with open(root / "changed.fits", "ab") as f:
        f.write(b"\0" * 2880)
    stat = (root / "touched.fits").stat()
    os.utime(root / "touched.fits", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    (root / "gone.fits").unlink()
    write_frame(root / "sub" / "new.fits", rng, {})

    compiled = _plan(catalog, root)
    monkeypatch.setattr(ingest, "_settle_unchanged", None)
    python = _plan(catalog, root)
    assert compiled == python
    to_read, bad, known, gone, unchanged, ignored = compiled
    assert [r[0] for r in to_read] == ["changed.fits", "empty.fits", "touched.fits", "sub/new.fits"]  # empty: unreadable
    assert {relpath for relpath, _ in bad} >= {"broken.fits", "pipe.fits"}
    assert len(gone) == 1 and ignored == 2  # gone.fits; notes.txt and dirlink (a directory link is not followed)
    assert unchanged >= 7  # a, b, UPPER, c.fits.gz, link, sub/d, sub/deeper/e (and é, by the Python path)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_threaded_stats_settle_the_same_files(tmp_path, monkeypatch, threads):
    """The stats split over threads settle exactly the files one thread
    settles: unchanged ones only, each once, whatever share a thread got."""
    _require_compiled()
    from archive import _scan

    monkeypatch.setattr(_scan, "PARALLEL_FROM", 0)  # threads even for a few files
    stored = {}
    for number in range(40):
        path = tmp_path / f"f{number:02d}.fits"
        path.write_bytes(b"x" * (2880 + number))
        st = path.stat()
        status = "missing" if number == 5 else "present"
        size = st.st_size + (1 if number % 7 == 3 else 0)  # changed since it was stored
        stored[f"sub/{path.name}"] = (1, f"sub/{path.name}", number, size, st.st_mtime_ns, status)
    (tmp_path / "new.fits").write_bytes(b"y" * 2880)  # on disk, not stored
    (tmp_path / "dir.fits").mkdir()
    os.symlink(tmp_path / "f00.fits", tmp_path / "link.fits")
    del stored["sub/f09.fits"]
    (tmp_path / "f09.fits").unlink()

    left = dict(stored)
    settled, others = _scan.settle_unchanged(os.fsencode(tmp_path), "sub/", left, frozenset({".fits"}), threads)
    changed = {f"f{n:02d}.fits" for n in (3, 5, 10, 17, 24, 31, 38)}
    assert settled == 39 - len(changed)
    assert sorted(map(os.fsdecode, others)) == sorted(changed | {"new.fits", "dir.fits", "link.fits"})
    assert set(left) == {f"sub/{name}" for name in changed}  # what is left is what a re-scan still looks at


def test_a_tree_read_ahead_plans_as_one_read_by_the_scan(catalog, tmp_path, rng, monkeypatch):
    """``obsarch ingest`` reads and stats the tree while it imports
    (archive/prescan.py); the scan that takes those listings plans exactly
    what it plans reading the tree itself, subdirectories included, and so
    does one that found only part of the tree read ahead."""
    _require_compiled()
    from archive import prescan

    root = tmp_path / "tree"
    _odd_tree(root, rng)
    catalog.ingest([root])
    with open(root / "sub" / "deeper" / "e.fits", "ab") as f:
        f.write(b"\0" * 2880)
    (root / "b.fit").unlink()
    write_frame(root / "sub" / "new.fits", rng, {})

    _settled(root)
    read_here = _plan(catalog, root)
    ahead = prescan.start([root])
    listings = ahead.take([root])
    assert len(listings) == 3  # the tree, sub and sub/deeper; not the link to sub
    with_listings = _plan_with(catalog, root, listings)
    assert not listings  # each taken by the scan of its directory
    assert with_listings == read_here
    assert [r[0] for r in read_here[0]] == ["empty.fits", "sub/new.fits", "sub/deeper/e.fits"]

    monkeypatch.setattr(prescan, "LIMIT", 3)  # the first directory only: the rest read by the scan
    partial = prescan.start([root]).take([root])
    assert len(partial) == 1
    assert _plan_with(catalog, root, partial) == read_here


def _plan_with(catalog, root, listings):
    class Taken:  # what prescan.Prescan gives the scan
        def take(self, paths):
            return listings

    summary = ingest.IngestSummary(run_id=0)
    to_read, bad, known, gone = ingest._plan(catalog.engine, [root], summary, Taken())
    return ([(s.relpath, s.size, s.mtime_ns) for s in to_read], [(s.relpath, s.error) for s in bad],
            known, sorted(gone), summary.unchanged, summary.ignored)


def test_what_was_read_ahead_serves_only_its_own_directories_and_once(catalog, tmp_path, rng):
    """A listing read ahead for other directories (or taken already) is
    never compared: a file changed since is read again, not called unchanged."""
    _require_compiled()
    import threading

    from archive import prescan

    root = _stored_tree(catalog, tmp_path, rng)
    ahead = prescan.start([root / "sub"])  # read before the change, for another set of directories
    ahead._thread.join()
    with open(root / "sub" / "b.fits", "ab") as f:
        f.write(b"\0" * 2880)
    assert ahead.take([root]) == {}
    assert ahead.take([root / "sub"]) == {}  # taken once: nothing is left for a second scan

    once = prescan.start([root])
    summary = catalog.ingest([root], ahead=once)
    assert (summary.changed, summary.unchanged) == (1, 1)
    assert once.take([root]) == {}
    assert not [t for t in threading.enumerate() if t.name == "obsarch-prescan"]  # joined before readers fork

    with open(root / "a.fits", "ab") as f:
        f.write(b"\0" * 2880)
    summary = catalog.ingest([root])  # a library call reads ahead on its own, around its fetch
    assert (summary.changed, summary.unchanged) == (1, 1)
    assert not [t for t in threading.enumerate() if t.name == "obsarch-prescan"]


def test_read_directory_lists_every_entry_and_stats_only_regular_files(tmp_path):
    _require_compiled()
    from archive import _scan

    (tmp_path / "a.fits").write_bytes(b"x" * 2880)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    os.mkfifo(tmp_path / "pipe.fits")
    listing = _scan.read_directory(os.fsencode(tmp_path), 2)
    assert len(listing) == 4
    assert listing.subdirectories() == [b"sub"]
    st = os.stat(tmp_path)
    assert listing.key == (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    assert _scan.read_directory(os.fsencode(tmp_path / "nowhere")) is None
    settled, others = _scan.settle_unchanged(b"", "", {"a.fits": (1, "a.fits", 1, 2880, os.stat(tmp_path / "a.fits").st_mtime_ns,
                                                                  "present")}, frozenset({".fits"}), listing=listing)
    assert settled == 1 and sorted(others) == [b"link", b"pipe.fits", b"sub"]


def test_a_directory_changed_after_it_was_read_ahead_is_read_again(catalog, tmp_path, rng):
    """A file added, or a directory renamed, between the read-ahead and the
    scan is found: the listing of a directory whose entries changed since
    (its mtime and ctime moved) no longer serves (a review: the stale
    listing named the only entries the scan looked at, and new=0)."""
    _require_compiled()
    from archive import prescan

    root = _stored_tree(catalog, tmp_path, rng)
    ahead = prescan.start([root])
    ahead._done.wait()
    (root / "sub").rename(root / "sub2")
    write_frame(root / "c.fits", rng, {})
    write_frame(root / "sub2" / "d.fits", rng, {})
    summary = catalog.ingest([root], ahead=ahead)
    assert (summary.new, summary.unchanged, summary.missing) == (3, 1, 1)  # c, sub2/b, sub2/d; a; sub/b


def test_a_directory_changed_just_before_it_was_read_is_left_to_the_scan(tmp_path, rng):
    """Within the file system clock's tick the mtime would not show an entry
    added after the read: such a fresh directory is not kept."""
    _require_compiled()
    from archive import prescan

    write_frame(tmp_path / "a.fits", rng, {})
    assert prescan.start([tmp_path]).take([tmp_path]) == {}
    _settled(tmp_path)
    assert len(prescan.start([tmp_path]).take([tmp_path])) == 1


def test_the_read_ahead_stops_when_the_ingest_fails_or_is_interrupted(catalog, tmp_path, rng, monkeypatch):
    """Its thread is told to stop however the ingest ends (a bad path after it
    started, Ctrl-C while the scan waits for it), without waiting for the
    directory it is reading (an interrupt took 17 s on a slow directory, and
    several presses: a review), and the next ingest waits for it before it
    forks its readers."""
    _require_compiled()
    import threading
    import time

    from archive import prescan
    from archive.exceptions import NotFoundError

    gate = threading.Event()
    real = prescan.read_directory

    def slow(directory, threads):  # a directory on a slow disk
        gate.wait(10)
        return real(directory, threads)

    for number in range(3):
        write_frame(tmp_path / "tree" / f"d{number}" / "a.fits", rng, {})
    _settled(tmp_path / "tree")
    monkeypatch.setattr(prescan, "read_directory", slow)
    for interrupt in (False, True):
        gate.clear()
        ahead = prescan.start([tmp_path / "tree"])
        began = time.monotonic()
        if interrupt:
            def pressed():  # Ctrl-C while the scan waits for the thread
                raise KeyboardInterrupt

            monkeypatch.setattr(ahead._done, "wait", pressed)
            with pytest.raises(KeyboardInterrupt):
                catalog.ingest([tmp_path / "tree"], ahead=ahead)
        else:
            with pytest.raises(NotFoundError):
                catalog.ingest([tmp_path / "tree", tmp_path / "nowhere"], ahead=ahead)
        assert time.monotonic() - began < 5 and ahead._stop.is_set() and ahead._thread.is_alive()
        gate.set()
        summary = catalog.ingest([tmp_path / "tree"])  # joins it before forking its readers
        assert summary.new + summary.unchanged == 3 and not ahead._thread.is_alive() and not prescan._STOPPED
        assert len(ahead._found) == 0  # stopped after the directory it was reading, what it read dropped
