"""Ingest and query speed, next to ccdproc.ImageFileCollection, in one run.

    python benchmarks/ingest.py [--single 5000] [--multi 1000] [--exposures 1000000] [--rounds 5]

Prints files/s of a first ``obsarch ingest`` (the command, as a user runs
it), of a re-scan of the unchanged tree, of
``ccdproc.ImageFileCollection(location, keywords='*')`` on the same files,
and the time of a two-predicate query (a normalized column and a header
keyword) over N exposures loaded straight into a SQLite catalog.
Needs ccdproc (``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BANDS = ("U", "B", "V", "R", "I")


def card(keyword: str, value, comment: str = "") -> str:
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, (int, float)):
        text = f"{value!r:>20}"
    else:
        text = f"'{value:<8}'".ljust(20)
    body = f"{keyword:<8}= {text}" + (f" / {comment}" if comment else "")
    return body[:80].ljust(80)


def header_text(cards: list[str]) -> bytes:
    text = "".join(cards) + "END".ljust(80)
    return text.ljust((len(text) + 2879) // 2880 * 2880).encode("ascii")


def frame_cards(rng: random.Random, number: int, primary: bool, naxis: tuple[int, int]) -> list[str]:
    first = card("SIMPLE", True, "conforms to FITS") if primary else card("XTENSION", "IMAGE", "image extension")
    cards = [first, card("BITPIX", 16), card("NAXIS", 2), card("NAXIS1", naxis[1]), card("NAXIS2", naxis[0])]
    if not primary:
        cards += [card("PCOUNT", 0), card("GCOUNT", 1), card("EXTNAME", f"CCD{number % 4}")]
    cards += [
        card("BZERO", 32768), card("BSCALE", 1),
        card("IMAGETYP", rng.choice(["Light Frame", "Bias Frame", "Flat Field", "Dark Frame"])),
        card("FILTER", rng.choice(BANDS)), card("EXPTIME", round(rng.uniform(1, 300), 3), "[s]"),
        card("DATE-OBS", f"2017-08-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"),
        card("OBJECT", f"NGC {rng.randint(1, 7000)}"), card("RA", f"{rng.randint(0, 23):02d}:35:50"),
        card("DEC", f"-{rng.randint(0, 89):02d}:13:00"), card("AIRMASS", round(rng.uniform(1, 2.5), 4)),
        card("FRAMENUM", number), card("CCD-TEMP", round(rng.uniform(-30, -10), 2), "[C]"),
        card("INSTRUME", "BenchCam"), card("TELESCOP", "Bench 1m"), card("READOUTM", "SCI1.0"),
    ]
    while len(cards) < 140:
        i = len(cards)
        kind = i % 3
        value = rng.uniform(-1e3, 1e3) if kind == 0 else rng.randint(0, 10_000) if kind == 1 else f"value {i}"
        cards.append(card(f"KEY{i:05d}", value, f"synthetic keyword {i}"))
    cards += [f"HISTORY step {i} of the reduction".ljust(80) for i in range(6)]
    cards += [f"COMMENT synthetic header for the benchmark {i}".ljust(80) for i in range(4)]
    return cards


def data_bytes(naxis: tuple[int, int]) -> bytes:
    size = naxis[0] * naxis[1] * 2
    return b"\0" * ((size + 2879) // 2880 * 2880)


def make_files(directory: Path, single: int, multi: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shape = (64, 64)
    for i in range(single):
        (directory / f"frame{i:06d}.fits").write_bytes(header_text(frame_cards(rng, i, True, shape)) + data_bytes(shape))
    for i in range(multi):
        primary = [card("SIMPLE", True), card("BITPIX", 8), card("NAXIS", 0), card("EXTEND", True)]
        primary += frame_cards(rng, single + i, True, shape)[5:]
        parts = [header_text(primary)]
        for ext in range(4):
            parts += [header_text(frame_cards(rng, ext, False, shape)[:60]), data_bytes(shape)]
        (directory / f"mosaic{i:06d}.fits").write_bytes(b"".join(parts))


def time_obsarch(db: Path, directory: Path) -> float:
    # As after a pip install, which compiles every module to bytecode: the
    # untimed ``obsarch init`` writes it here when the environment forbids it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["OBSARCH_DB"] = f"sqlite:///{db}"
    obsarch = Path(sys.executable).with_name("obsarch")
    if not db.exists():
        subprocess.run([str(obsarch), "init"], check=True, env=env, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run([str(obsarch), "ingest", str(directory)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_startup() -> float:
    """``obsarch --version``: Python and obsarch's imports, which every
    command pays once (median of five)."""
    obsarch = Path(sys.executable).with_name("obsarch")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([str(obsarch), "--version"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_library(db: Path, directory: Path) -> tuple[float, float]:
    """First scan and re-scan through the Python API: the scan itself,
    without the interpreter's start-up that the command line pays."""
    from archive.catalog import Catalog

    catalog = Catalog.create(f"sqlite:///{db}")
    start = time.perf_counter()
    catalog.ingest([directory])
    first = time.perf_counter() - start
    rescans = []
    for _ in range(5):
        start = time.perf_counter()
        catalog.ingest([directory])
        rescans.append(time.perf_counter() - start)
    catalog.engine.dispose()
    return first, statistics.median(rescans)


def time_ccdproc(directory: Path) -> float | None:
    try:
        import warnings

        from ccdproc import ImageFileCollection
    except ImportError:
        return None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collection = ImageFileCollection(str(directory), keywords="*")
    assert len(collection.summary) > 0
    return time.perf_counter() - start


def load_exposures(db: Path, n: int, cards_per_exposure: int, seed: int = 2) -> None:
    """Put n exposures (file, HDU, cards, normalized row) straight into an
    obsarch catalog, as many ingests would have."""
    from archive.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    engine.dispose()
    rng = random.Random(seed)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("INSERT INTO roots (id, path, created_at) VALUES (1, '/bench', '2026-01-01')")
    chunk = 50_000
    for start in range(0, n, chunk):
        ids = range(start + 1, min(n, start + chunk) + 1)
        conn.executemany(
            "INSERT INTO files (id, root_id, relpath, size, mtime_ns, header_hash, status, version, first_seen, last_seen)"
            " VALUES (?, 1, ?, 8640, 0, 'x', 'present', 1, '2026-01-01', '2026-01-01')",
            ((i, f"f{i:07d}.fits") for i in ids),
        )
        conn.executemany(
            "INSERT INTO hdus (file_id, hdu_index, extname, hdu_type, shape, bitpix, ncards) VALUES (?, 0, 'PRIMARY', 'image', '64x64', 16, ?)",
            ((i, cards_per_exposure) for i in ids),
        )
        conn.executemany(
            "INSERT INTO exposures (id, file_id, frame_type, band, exptime, night, frame_number, instrument)"
            " VALUES (?, ?, 'science', ?, ?, ?, ?, 'BenchCam')",
            ((i, i, rng.choice(BANDS), rng.uniform(1, 300), f"2017-08-{rng.randint(1, 28):02d}", i) for i in ids),
        )
        rows = []
        for i in ids:
            rows.append((i, 0, 0, "CCD-TEMP", None, rng.uniform(-30, -10), "f", None))
            rows.append((i, 0, 1, "OBSERVER", rng.choice(["ann", "bob", "eve"]), None, "s", None))
            for k in range(2, cards_per_exposure):
                value = rng.uniform(0, 1000)
                rows.append((i, 0, k, f"KEY{k:03d}", f"{value:.3f}", value, "f", None))
        conn.executemany("INSERT INTO header_cards VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def time_query(db: Path, selection: str, repeat: int = 7) -> tuple[float, int]:
    from archive.catalog import Catalog

    catalog = Catalog(f"sqlite:///{db}")
    catalog.exposure_ids(selection)  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        ids = catalog.exposure_ids(selection)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--multi", type=int, default=1000)
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=12, help="cards per exposure in the query catalog")
    parser.add_argument("--rounds", type=int, default=5, help="times every reader is timed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-"))
    try:
        data = work / "frames"
        make_files(data, args.single, args.multi)
        n = args.single + args.multi
        for path in data.iterdir():  # warm cache for every reader
            path.read_bytes()
        print(f"{n} files ({args.single} single-HDU, {args.multi} with 4 extensions), ~150 cards per header, {os.cpu_count()} cores")

        # The machine's speed drifts between runs (shared virtual cores), so
        # each round times every reader once, back to back, and the speed-ups
        # are taken within a round; the table gives the median round.
        rounds = []
        for r in range(args.rounds):
            peer = time_ccdproc(data)
            first = time_obsarch(work / f"cat{r}.db", data)
            rescan = time_obsarch(work / f"cat{r}.db", data)
            lib_first, lib_rescan = time_library(work / f"lib{r}.db", data)
            rounds.append((peer, first, rescan, lib_first, lib_rescan))
            if peer is not None:
                print(f"round {r + 1}: ImageFileCollection {peer:.2f} s, obsarch ingest {first:.2f} s "
                      f"({peer / first:.1f}x), Catalog.ingest {lib_first:.2f} s ({peer / lib_first:.1f}x)")
        peer, first, rescan, lib_first, lib_rescan = (
            statistics.median(column) if None not in column else None for column in zip(*rounds)
        )
        print(f"{'':44}{'seconds':>9}{'files/s':>10}   (median of {args.rounds} rounds)")
        print(f"{'obsarch ingest, command (first scan)':44}{first:9.2f}{n / first:10.0f}")
        print(f"{'obsarch ingest, command (re-scan)':44}{rescan:9.2f}{n / rescan:10.0f}")
        print(f"{'Catalog.ingest, in Python (first scan)':44}{lib_first:9.2f}{n / lib_first:10.0f}")
        print(f"{'Catalog.ingest, in Python (re-scan)':44}{lib_rescan:9.3f}{n / lib_rescan:10.0f}")
        if peer is None:
            print("ccdproc not installed: pip install '.[bench]' to measure ImageFileCollection")
        else:
            print(f"{'ccdproc.ImageFileCollection(keywords=*)':44}{peer:9.2f}{n / peer:10.0f}")
            command = statistics.median(p / f for p, f, *_ in rounds)
            library = statistics.median(p / f for p, _, _, f, _ in rounds)
            print(f"first scan: {command:.1f}x ImageFileCollection (command), {library:.1f}x (in Python); "
                  "median of the rounds' ratios")
        print(f"re-scan: {first / rescan:.0f}x the first scan (command, start-up included), "
              f"{lib_first / lib_rescan:.0f}x (in Python); a command's start-up alone "
              f"(obsarch --version) takes {time_startup():.2f} s")

        start = time.perf_counter()
        load_exposures(work / "big.db", args.exposures, args.cards)
        print(f"\n{args.exposures} exposures x {args.cards} cards loaded into SQLite in {time.perf_counter() - start:.0f} s"
              f" ({(work / 'big.db').stat().st_size / 1e9:.2f} GB)")
        for selection in (
            "band == 'V' and hdr['CCD-TEMP'] < -29.5",
            "band == 'V' and hdr['CCD-TEMP'] < -25",
            "hdr['OBSERVER'] == 'eve' and night == '2017-08-03'",
            "hdr['KEY007'] between 500 and 500.5",
        ):
            seconds, count = time_query(work / "big.db", selection)
            print(f"query {selection!r:58} {seconds * 1000:7.1f} ms  ({count} exposures)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
