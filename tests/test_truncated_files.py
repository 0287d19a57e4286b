"""Files cut short (a copy stopped, a disk filled up, a download broke off):
each is refused through `obsarch ingest` with one line naming the file and
where it ends, the good files of the same batch are stored, and a file that
was good and is cut now keeps the values stored from its good version.

Where a FITS file may end (FITS 4.0, section 3.3): after the whole 2880-byte
blocks of its last HDU, or, as some writers leave it and astropy reads it,
where the last HDU's data end (the padding omitted). A file ending anywhere
else is cut: inside a header, inside data, or inside the padding after data
(where the next HDU's header would have begun).
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from factories import CCD_HEADER, obsarch
from sqlalchemy import text

from archive import db
from archive.ingest import is_fits_name

NOT_BLOCKS = "a FITS file is a multiple of 2880"


def three_extensions(rng, shape=(32, 32)) -> bytes:
    """A primary header holding the observation's cards (no data) and three
    image extensions: a mosaic camera's frame."""
    primary = fits.PrimaryHDU()
    for key, value in CCD_HEADER.items():
        primary.header[key] = value
    images = [fits.ImageHDU(rng.normal(1000, 10, shape).astype(np.float32), name=f"CCD{i}") for i in (1, 2, 3)]
    out = io.BytesIO()
    fits.HDUList([primary, *images]).writeto(out)
    return out.getvalue()


def layout(data: bytes, **options) -> list[tuple[int, int, int]]:
    """(header start, data start, padded end) of each HDU, as astropy finds them."""
    with fits.open(io.BytesIO(data), **options) as hdul:
        infos = [hdul.fileinfo(i) for i in range(len(hdul))]
    return [(i["hdrLoc"], i["datLoc"], i["datLoc"] + i["datSpan"]) for i in infos]


def compressed_frame(rng) -> bytes:
    """An fpack-style file as LCO writes them: an empty primary, the frame
    and all its cards in a tile-compressed SCI extension."""
    header = fits.Header()
    for key, value in {**CCD_HEADER, "DETECTOR": "fl03"}.items():
        header[key] = value
    data = rng.integers(900, 1100, (64, 64)).astype(np.int16)  # integers: lossless, the same bytes each run
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, name="SCI")]).writeto(out)
    return out.getvalue()


def errors_csv(url: str) -> dict[str, tuple[str, str]]:
    rows = csv.DictReader(io.StringIO(obsarch(url, "errors", "--format", "csv").stdout))
    return {Path(row["path"]).name: (row["status"], row["reason"]) for row in rows}


def stderr_lines(result) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines() if line.strip()]


def sql(url: str, statement: str, **params) -> list[tuple]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(statement), params)]
    finally:
        engine.dispose()


def test_the_synthetic_layouts_are_as_the_cases_below_assume(rng):
    """The byte offsets the cases cut at (from astropy's own reading)."""
    assert layout(three_extensions(rng)) == [(0, 2880, 2880), (2880, 5760, 11520), (11520, 14400, 20160), (20160, 23040, 28800)]
    assert layout(three_extensions(rng, shape=(8, 8))) == [(0, 2880, 2880), (2880, 5760, 8640), (8640, 11520, 14400), (14400, 17280, 20160)]


# Each 32x32 float32 extension has 4,096 bytes of data: HDU 1's data are bytes
# 5,760-9,856, HDU 2's 14,400-18,496, HDU 3's 23,040-27,136 (padded to 28,800).
# name -> (where the file is cut, the line `obsarch ingest` prints for it)
CUTS = {
    "inside the primary header": (
        1000, f"truncated: the file ends inside the primary header, before its END card (1,000 bytes; {NOT_BLOCKS})"),
    "after END, inside the primary header's last block": (
        2000, f"truncated: the file ends inside the primary header (2,000 bytes; {NOT_BLOCKS})"),
    "inside an extension header": (
        11620, f"truncated: the file ends inside the header of HDU 2, before its END card (11,620 bytes; {NOT_BLOCKS})"),
    "inside the data of a middle HDU": (
        7000, "truncated: HDU 1's data end at byte 9,856, the file ends at byte 7,000 (2,856 bytes missing)"),
    "inside the padding after a middle HDU's data": (
        10000, f"truncated: the file ends inside the padding after HDU 1's data (10,000 bytes; {NOT_BLOCKS})"),
    "at the block boundary between a header and its data": (
        14400, "truncated: HDU 2's data end at byte 18,496, the file ends at byte 14,400 (4,096 bytes missing)"),
    "inside the data of the last HDU": (
        25000, "truncated: HDU 3's data end at byte 27,136, the file ends at byte 25,000 (2,136 bytes missing)"),
    "inside the padding after the last HDU's data": (
        28000, f"truncated: the file ends inside the padding after HDU 3's data (28,000 bytes; {NOT_BLOCKS})"),
}

# The tester's file: three 8x8 extensions (HDU 1's data end at 6,016 and are padded to 8,640).
TESTER_CUTS = {
    "tester: cut 7000": (7000, f"truncated: the file ends inside the padding after HDU 1's data (7,000 bytes; {NOT_BLOCKS})"),
    "tester: cut 4880": (4880, f"truncated: the file ends inside the header of HDU 1 (4,880 bytes; {NOT_BLOCKS})"),  # after its END
    "tester: cut 2881": (2881, f"truncated: the file ends inside the header of HDU 1, before its END card (2,881 bytes; {NOT_BLOCKS})"),
}


def _ingest_batch(url: str, directory: Path, code: int):
    obsarch(url, "init")
    return obsarch(url, "ingest", str(directory), code=code)


def _assert_refused_and_neighbours_stored(url: str, result, bad: Path, reason: str, good: list[str]) -> None:
    lines = stderr_lines(result)
    assert f"{bad}: {reason}" in lines, result.stderr
    assert lines[-1].startswith("1 file failed, the others were stored"), result.stderr
    assert f"{len(good)} new" in result.stdout and "1 failed" in result.stdout
    assert errors_csv(url)[bad.name] == ("unreadable", reason)
    stored = sql(url, "select f.relpath, f.status, e.n_detectors from files f join exposures e on e.file_id = f.id order by f.relpath")
    assert stored == [(name, "present", 3) for name in good]
    assert sql(url, "select count(*) from hdus h join files f on f.id = h.file_id where f.relpath = :p", p=bad.name) == [(0,)]


@pytest.mark.parametrize("case", [*CUTS, *TESTER_CUTS])
def test_a_cut_file_gets_one_line_and_its_neighbours_are_stored(url, tmp_path, rng, case):
    cut, reason = {**CUTS, **TESTER_CUTS}[case]
    whole = three_extensions(rng, shape=(8, 8) if case in TESTER_CUTS else (32, 32))
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "a-good.fits").write_bytes(whole)
    (batch / "z-good.fits").write_bytes(three_extensions(rng))
    bad = batch / "cut.fits"
    bad.write_bytes(whole[:cut])
    result = _ingest_batch(url, batch, code=3)
    _assert_refused_and_neighbours_stored(url, result, bad, reason, ["a-good.fits", "z-good.fits"])


@pytest.mark.parametrize(
    "case, make, reason",
    [
        ("gzip stream cut in half", lambda whole: gzip.compress(whole, mtime=0)[: len(gzip.compress(whole, mtime=0)) // 2],
         "truncated or corrupt gzip stream: Compressed file ended before the end-of-stream marker was reached"),
        ("gzip stream without its 8-byte trailer", lambda whole: gzip.compress(whole, mtime=0)[:-8],
         "truncated or corrupt gzip stream: Compressed file ended before the end-of-stream marker was reached"),
        ("whole gzip stream of a cut file", lambda whole: gzip.compress(whole[:11620], mtime=0),
         f"truncated: the file ends inside the header of HDU 2, before its END card (11,620 bytes unpacked; {NOT_BLOCKS})"),
        ("whole gzip stream of a file cut in its padding", lambda whole: gzip.compress(whole[:28000], mtime=0),
         f"truncated: the file ends inside the padding after HDU 3's data (28,000 bytes unpacked; {NOT_BLOCKS})"),
    ],
)
def test_a_truncated_gzip_file_gets_one_line(url, tmp_path, rng, case, make, reason):
    whole = three_extensions(rng)
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "a-good.fits.gz").write_bytes(gzip.compress(whole, mtime=0))
    bad = batch / "cut.fits.gz"
    bad.write_bytes(make(whole))
    result = _ingest_batch(url, batch, code=3)
    _assert_refused_and_neighbours_stored(url, result, bad, reason, ["a-good.fits.gz"])


def test_a_truncated_fz_file_gets_one_line(url, tmp_path, rng):
    """The size check applies to the binary table as written (its rows and
    heap), not to the image it decompresses to."""
    whole = compressed_frame(rng)
    (_, _, _), (table_header, table_data, padded_end) = layout(whole, disable_image_compression=True)
    assert (table_header, table_data, padded_end) == (2880, 8640, len(whole))
    with fits.open(io.BytesIO(whole), disable_image_compression=True) as hdul:
        table = hdul[1].header
        data_end = table_data + table["NAXIS1"] * table["NAXIS2"] + table["PCOUNT"]
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "a-good.fits.fz").write_bytes(whole)
    (batch / "header-cut.fits.fz").write_bytes(whole[:5000])  # the tester's cut
    (batch / "heap-cut.fits.fz").write_bytes(whole[: data_end - 100])
    obsarch(url, "init")
    result = obsarch(url, "ingest", str(batch), code=3)
    reasons = {
        "header-cut.fits.fz": f"truncated: the file ends inside the header of HDU 1, before its END card (5,000 bytes; {NOT_BLOCKS})",
        "heap-cut.fits.fz": f"truncated: HDU 1's data end at byte {data_end:,}, the file ends at byte {data_end - 100:,} (100 bytes missing)",
    }
    for name, reason in reasons.items():
        assert f"{batch / name}: {reason}" in stderr_lines(result), result.stderr
        assert errors_csv(url)[name] == ("unreadable", reason)
    assert "1 new" in result.stdout and "2 failed" in result.stdout
    assert sql(url, "select f.relpath, f.status, e.instrument, e.detector from files f join exposures e on e.file_id = f.id") == [
        ("a-good.fits.fz", "present", "TestCam", "fl03")]


def test_files_that_end_where_fits_allows_are_stored(url, tmp_path, rng):
    """Not refused: the last data unit written without its padding (astropy
    reads it), bytes after the last HDU that are no header (ignored, as
    astropy does), and a cut exactly between two HDUs. The last is a complete
    FITS file of fewer HDUs: nothing in its bytes says more were written
    (EXTEND = T allows extensions, it does not count them)."""
    whole = three_extensions(rng)
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "unpadded.fits").write_bytes(whole[:27136])
    (batch / "trailing-newline.fits").write_bytes(whole + b"\n")
    (batch / "between-hdus.fits").write_bytes(whole[:11520])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(batch / "unpadded.fits") as hdul:
            assert hdul[3].data.shape == (32, 32)
    obsarch(url, "init")
    result = obsarch(url, "ingest", str(batch))
    assert "3 new" in result.stdout and "0 failed" in result.stdout
    assert errors_csv(url) == {}
    assert sql(url, "select f.relpath, e.n_detectors, (select count(*) from hdus h where h.file_id = f.id) "
                    "from files f join exposures e on e.file_id = f.id order by f.relpath") == [
        ("between-hdus.fits", 1, 2), ("trailing-newline.fits", 3, 4), ("unpadded.fits", 3, 4)]


@pytest.mark.parametrize("kind", ["plain", "fz"])
def test_a_good_file_cut_later_keeps_its_stored_values(url, tmp_path, rng, kind):
    """A re-scan that finds the file cut records the reason on its files row
    (status unreadable) and keeps what the last good read stored: the
    exposure's values, its HDUs and cards, its header hash."""
    whole, name, cut = (three_extensions(rng), "frame.fits", 3000) if kind == "plain" else (compressed_frame(rng), "frame.fits.fz", 5000)
    reason = f"truncated: the file ends inside the header of HDU 1, before its END card ({cut:,} bytes; {NOT_BLOCKS})"
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / name).write_bytes(whole)
    (batch / "neighbour.fits").write_bytes(three_extensions(rng))
    obsarch(url, "init")
    obsarch(url, "ingest", str(batch))

    def stored():
        return sql(url, "select e.instrument, e.telescope, e.detector, e.n_detectors, e.detector_shape, f.header_hash, f.version, "
                        "(select count(*) from hdus h where h.file_id = f.id), "
                        "(select count(*) from header_cards c where c.file_id = f.id) "
                        "from files f join exposures e on e.file_id = f.id where f.relpath = :p", p=name)

    before = stored()
    assert before[0][0] == "TestCam" and before[0][3] >= 1
    (batch / name).write_bytes(whole[:cut])
    result = obsarch(url, "ingest", str(batch), code=3)
    assert "0 changed" in result.stdout and "1 failed" in result.stdout
    assert f"{batch / name}: {reason}" in stderr_lines(result)
    assert stored() == before
    assert sql(url, "select status, error from files where relpath = :p", p=name) == [("unreadable", reason)]
    assert errors_csv(url) == {name: ("unreadable", reason)}


def test_every_real_file_still_ingests(url, real_data):
    """No real file is refused: each FITS file is stored present, with the
    HDUs astropy finds in it (none of them is cut; all end on a block)."""
    obsarch(url, "init")
    obsarch(url, "ingest", str(real_data))
    fits_files = sorted(p.relative_to(real_data).as_posix() for p in real_data.rglob("*") if p.is_file() and is_fits_name(p.name))
    rows = sql(url, "select f.relpath, f.status, (select count(*) from hdus h where h.file_id = f.id) from files f order by f.relpath")
    assert [r[0] for r in rows] == fits_files
    assert [(r[0], r[1]) for r in rows if r[1] != "present"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for relpath, _, hdus in rows:
            with fits.open(real_data / relpath) as hdul:
                assert hdus == len(hdul), relpath
