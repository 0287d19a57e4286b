"""The re-scan's compiled path (archive/_scan.pyx) settles only what the
Python path would call unchanged; everything else it hands back. Both paths
must plan the same scan of a tree with every odd kind of entry. Both backends."""

from __future__ import annotations

import os

import pytest
from factories import write_frame

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


def _plan(catalog, root):
    summary = ingest.IngestSummary(run_id=0)
    to_read, bad, known, gone = ingest._plan(catalog.engine, [root], summary)
    return ([(s.relpath, s.size, s.mtime_ns) for s in to_read], [(s.relpath, s.error) for s in bad],
            known, sorted(gone), summary.unchanged, summary.ignored)


@pytest.mark.skipif(ingest._settle_unchanged is None, reason="the compiled re-scan is not built")
def test_compiled_and_python_rescans_plan_the_same(catalog, tmp_path, rng, monkeypatch):
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
