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
