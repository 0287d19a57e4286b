"""Ingest and query speed on SQLite and PostgreSQL, next to peers of the same run.

    python benchmarks/ingest.py [--single 5000] [--multi 1000] [--rounds 3]
        [--rescan-files 48000] [--rss-files 100000] [--exposures 1000000]
        [--backends sqlite,postgresql] [--pg-url postgresql://postgres@127.0.0.1:5432/test]

Prints, for each backend:

- files/s of a first ``obsarch ingest`` (the command, as a user runs it) and
  of ``Catalog.ingest``, next to ``ccdproc.ImageFileCollection(location,
  keywords='*')`` on the same files in the same round;
- the storage floor: the database alone storing the same card rows and
  building their keys and indexes (no reading, no Python per row), the most
  files/s any ingest keeping one row per card can reach on one writer;
- the re-read of those files touched, then with one card changed, next to
  their first scan;
- a re-scan of an unchanged tree of ``--rescan-files`` files through the
  command, next to that tree's first scan;
- the peak memory of a first ingest of ``--rss-files`` files (the largest
  process's RSS, the RSS and the PSS summed over the command and its
  workers), next to the same command on the small tree;
- two-predicate queries (a normalized column and a header keyword) over
  ``--exposures`` exposures loaded straight into the catalog, each with its
  plan's shape, next to fetching as many ids by primary key: first from the
  card rows, then with the hot keywords promoted (``obsarch db promote``,
  timed too).

PostgreSQL catalogs are made in fresh schemas of ``--pg-url`` and dropped at
the end. Needs ccdproc and psutil (``pip install '.[bench]'``); a size of 0
skips a part.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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


def make_files(directory: Path, single: int, multi: int = 0, seed: int = 1) -> None:
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




# -- backends ------------------------------------------------------------------


class Backends:
    """Fresh catalog URLs on each backend; PostgreSQL schemas dropped at the end."""

    def __init__(self, work: Path, names: list[str], pg_url: str):
        self.work, self.names, self.pg_url = work, names, pg_url
        self.schemas: list[str] = []

    def url(self, backend: str, label: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.work / (label + '.db')}"
        import psycopg

        schema = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        return f"{self.pg_url}?options=-csearch_path%3D{schema}"

    def drop(self) -> None:
        if not self.schemas:
            return
        import psycopg

        from archive.db import reader_role

        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            database = conn.info.dbname
            for schema in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                conn.execute(f"DROP ROLE IF EXISTS {reader_role(database, schema)}")  # roles outlive schemas (0021)


def _env(url: str) -> dict:
    # As after a pip install, which compiles every module to bytecode: the
    # untimed ``obsarch init`` writes it here when the environment forbids it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["OBSARCH_DB"] = url
    return env


def _obsarch() -> str:
    return str(Path(sys.executable).with_name("obsarch"))


def init_catalog(url: str) -> None:
    subprocess.run([_obsarch(), "init"], check=True, env=_env(url), stdout=subprocess.DEVNULL)


CPU: dict[str, float] = {}  # CPU seconds of the last timed run of each reader: steadier than wall time on a busy machine


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers, once they have ended
    return usage.ru_utime + usage.ru_stime


def time_obsarch(url: str, directory: Path) -> float:
    cpu = _children_cpu()
    start = time.perf_counter()
    subprocess.run([_obsarch(), "ingest", str(directory)], check=True, env=_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    CPU["obsarch"] = _children_cpu() - cpu
    return seconds


def peak_memory(url: str, directory: Path) -> tuple[float, float, float, float]:
    """A first ``obsarch ingest`` of ``directory``: (seconds, peak RSS of its
    largest process, peak of the summed RSS of the command and its workers,
    peak of their summed PSS), sampled every 50 ms; in MB.

    The summed RSS counts twice every page a forked worker still shares with
    the command; the summed PSS (proportional set size: a shared page split
    among the processes sharing it) is the memory they take together."""
    import psutil

    start = time.perf_counter()
    process = psutil.Popen([_obsarch(), "ingest", str(directory)], env=_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    largest = total = proportional = 0
    while process.poll() is None:
        try:
            infos = [p.memory_full_info() for p in [process, *process.children(recursive=True)]]
        except psutil.Error:
            continue
        rss = [i.rss for i in infos]
        largest, total = max(largest, *rss), max(total, sum(rss))
        proportional = max(proportional, sum(i.pss for i in infos))
        time.sleep(0.05)
    if process.returncode:
        raise RuntimeError(f"obsarch ingest {directory} exited with {process.returncode}")
    return time.perf_counter() - start, largest / 1e6, total / 1e6, proportional / 1e6


def time_startup() -> float:
    """``obsarch --version``: Python and obsarch's imports, which every
    command pays once (median of five)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([_obsarch(), "--version"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_library(url: str, directory: Path) -> tuple[float, float]:
    """First scan and re-scan through the Python API: the scan itself,
    without the interpreter's start-up that the command line pays."""
    from archive.catalog import Catalog

    catalog = Catalog.create(url)
    start = time.perf_counter()
    catalog.ingest([directory])
    first = time.perf_counter() - start
    rescans = []
    for _ in range(3):
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
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collection = ImageFileCollection(str(directory), keywords="*")
    assert len(collection.summary) > 0
    CPU["ccdproc"] = time.process_time() - cpu
    return time.perf_counter() - start


# -- the query catalog ---------------------------------------------------------

OBSERVERS = ["ann"] * 33 + ["bob"] * 33 + ["eve"] * 33 + ["kim"]  # kim: 1 in 100


def exposure_rows(n: int, cards_per_exposure: int, seed: int = 2, chunk: int = 50_000):
    """(files, hdus, exposures, cards) rows of n exposures, chunk by chunk;
    the same on both backends."""
    rng = random.Random(seed)
    for start in range(0, n, chunk):
        ids = range(start + 1, min(n, start + chunk) + 1)
        files = [(i, 1, f"f{i:07d}.fits", 8640, 0, "x", "present", 1, "2026-01-01", "2026-01-01") for i in ids]
        hdus = [(i, 0, "PRIMARY", "image", "64x64", 16, cards_per_exposure) for i in ids]
        exposures = [
            (i, i, "science", rng.choice(BANDS), rng.uniform(1, 300), f"2017-08-{rng.randint(1, 28):02d}", i, "BenchCam")
            for i in ids
        ]
        cards = []
        for i in ids:
            cards.append((i, 0, 0, "CCD-TEMP", None, rng.uniform(-30, -10), "f", None))
            cards.append((i, 0, 1, "OBSERVER", rng.choice(OBSERVERS), None, "s", None))
            for k in range(2, cards_per_exposure):
                value = rng.uniform(0, 1000)
                cards.append((i, 0, k, f"KEY{k:03d}", f"{value:.3f}", value, "f", None))
        yield files, hdus, exposures, cards


FILE_COLUMNS = "id, root_id, relpath, size, mtime_ns, header_hash, status, version, first_seen, last_seen"
EXPOSURE_COLUMNS = "id, file_id, frame_type, band, exptime, night, frame_number, instrument"


def load_sqlite(url: str, n: int, cards_per_exposure: int) -> None:
    """Put n exposures (file, HDU, cards, normalized row) straight into an
    obsarch catalog, as many ingests would have."""
    from archive import ingest
    from archive.catalog import Catalog

    catalog = Catalog.create(url)
    ingest._drop_card_indexes(catalog.engine)  # built after, as a first ingest does
    catalog.engine.dispose()
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("INSERT INTO roots (id, path, created_at) VALUES (1, '/bench', '2026-01-01')")
    for files, hdus, exposures, cards in exposure_rows(n, cards_per_exposure):
        conn.executemany(f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
        conn.executemany("INSERT INTO hdus (file_id, hdu_index, extname, hdu_type, shape, bitpix, ncards) VALUES (?, ?, ?, ?, ?, ?, ?)", hdus)
        conn.executemany(f"INSERT INTO exposures ({EXPOSURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", exposures)
        conn.executemany("INSERT INTO header_cards VALUES (?, ?, ?, ?, ?, ?, ?, ?)", cards)
        conn.commit()
    conn.close()
    ingest.ensure_card_indexes(catalog.engine)
    ingest._analyze(catalog.engine, n)  # as a first ingest does (a bare ANALYZE here was rolled back)
    catalog.engine.dispose()


def load_postgresql(url: str, n: int, cards_per_exposure: int) -> None:
    """The same rows by COPY, the card table's keys and indexes built after
    (as a first ingest does), then ANALYZE."""
    from archive import ingest
    from archive.catalog import Catalog

    catalog = Catalog.create(url)
    ingest._drop_card_indexes(catalog.engine)
    ingest._drop_card_constraints(catalog.engine)
    with catalog.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("INSERT INTO roots (id, path, created_at) VALUES (1, '/bench', '2026-01-01')")
        for files, hdus, exposures, cards in exposure_rows(n, cards_per_exposure):
            for table, columns, rows in (
                ("files", FILE_COLUMNS, files),
                ("hdus", "file_id, hdu_index, extname, hdu_type, shape, bitpix, ncards", hdus),
                ("exposures", EXPOSURE_COLUMNS, exposures),
                ("header_cards", "file_id, hdu_index, position, keyword, value_text, value_num, vtype, comment", cards),
            ):
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        conn.connection.driver_connection.commit()
    ingest.ensure_card_constraints(catalog.engine)
    ingest.ensure_card_indexes(catalog.engine)
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    catalog.engine.dispose()


def plan_shape(catalog, selection: str) -> str:
    """The plan of the selection's statement, in one line."""
    from archive.query import ids_statement

    with catalog.engine.connect() as conn:
        statement = ids_statement(selection, catalog.dialect, conn)  # what exposure_ids runs
        sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
        if catalog.dialect == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            return "; ".join(row[-1] for row in rows)
        rows = conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {sql}").all()
        return "; ".join(" ".join(row[0].replace("->", "").split()) for row in rows if "->" in row[0] or not row[0].startswith(" "))


def time_query(catalog, selection: str, repeat: int = 7) -> tuple[float, int]:
    catalog.exposure_ids(selection)  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        ids = catalog.exposure_ids(selection)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(ids)


def time_fetch_ids(catalog, count: int, repeat: int = 7) -> float:
    """The peer of a query: fetching as many exposure ids by primary key,
    as :meth:`Catalog.exposure_ids` fetches them (plain ints from the cursor)."""
    from sqlalchemy import select

    from archive.models import Exposure

    statement = select(Exposure.id).where(Exposure.id <= count).order_by(Exposure.id)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with catalog.engine.connect() as conn:
            [row[0] for row in conn.execute(statement).cursor.fetchall()]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SELECTIONS = (
    "band == 'V' and hdr['CCD-TEMP'] < -29.5",  # numeric, selective
    "band == 'V' and hdr['CCD-TEMP'] < -25",  # numeric, unselective
    "hdr['OBSERVER'] == 'kim' and band == 'V'",  # text, selective
    "hdr['OBSERVER'] == 'eve' and night == '2017-08-03'",  # text, unselective keyword
    "hdr['OBSERVER'] == 'eve' and band == 'V'",  # text, both unselective
    "hdr['OBSERVER'] >= 'kim' and band == 'V'",  # text range (in byte order), selective
    "hdr['KEY007'] between 500 and 500.5",  # one keyword
)


# -- the parts -------------------------------------------------------------------


def touch_all(data: Path) -> None:
    """Move every file's mtime by 1 ms: what a copy or a re-download does."""
    for path in data.iterdir():
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def edit_headers(data: Path) -> None:
    """Change one card of every file in place (TELESCOP 'Bench 1m' <-> 'Bench
    2m'): the header bytes change, the size does not."""
    for path in data.iterdir():
        with open(path, "r+b") as f:
            at = f.read(2880).find(b"TELESCOP= 'Bench ") + len(b"TELESCOP= 'Bench ")
            f.seek(at)
            digit = f.read(1)
            f.seek(at)
            f.write(b"2" if digit == b"1" else b"1")


def changed_files(backends: Backends, data: Path, n: int) -> None:
    """The re-read of files a catalog holds: touched (same header bytes) and
    with one card changed (previous headers kept as versions), next to their
    first scan."""
    for backend in backends.names:
        url = backends.url(backend, "changed")
        init_catalog(url)
        first = time_obsarch(url, data)
        touch_all(data)
        touched = time_obsarch(url, data)
        edit_headers(data)
        changed = time_obsarch(url, data)
        print(f"{backend}: re-read of the {n} files touched {touched:.2f} s ({n / touched:.0f} files/s), with a card changed "
              f"{changed:.2f} s ({n / changed:.0f} files/s); their first scan {first:.2f} s ({n / first:.0f} files/s)", flush=True)


def ingest_rounds(args, backends: Backends, data: Path, n: int) -> None:
    # The machine's speed drifts between runs (shared virtual cores), so
    # each round times every reader once, back to back, and the speed-ups
    # are taken within a round; the table gives the median round.
    rounds: dict[str, list[tuple]] = {b: [] for b in backends.names}
    peers = []
    catalogs = {}  # backend -> the first round's catalog, for the storage floor
    for r in range(args.rounds):
        peer = time_ccdproc(data)
        peers.append(peer)
        line = [f"round {r + 1}: ImageFileCollection {peer:.2f} s (CPU {CPU['ccdproc']:.2f} s)" if peer else f"round {r + 1}:"]
        for backend in backends.names:
            url = backends.url(backend, f"cat{r}")
            catalogs.setdefault(backend, url)
            init_catalog(url)
            first = time_obsarch(url, data)
            first_cpu = CPU["obsarch"]
            rescan = time_obsarch(url, data)
            lib_first, lib_rescan = time_library(backends.url(backend, f"lib{r}"), data)
            rounds[backend].append((peer, first, rescan, lib_first, lib_rescan))
            ratio = f" ({peer / first:.1f}x)" if peer else ""
            line.append(f"{backend} command {first:.2f} s{ratio} (CPU {first_cpu:.2f} s, workers included), Catalog.ingest {lib_first:.2f} s")
        print("; ".join(line), flush=True)
    if None in peers:
        print("ccdproc not installed: pip install '.[bench]' to measure ImageFileCollection")
    else:
        peer = statistics.median(peers)
        print(f"\n{'':46}{'seconds':>9}{'files/s':>10}   (median of {args.rounds} rounds)")
        print(f"{'ccdproc.ImageFileCollection(keywords=*)':46}{peer:9.2f}{n / peer:10.0f}")
    for backend, rows in rounds.items():
        _, first, rescan, lib_first, lib_rescan = (statistics.median(column) for column in zip(*rows))
        print(f"{backend + ': obsarch ingest, command (first scan)':46}{first:9.2f}{n / first:10.0f}")
        print(f"{backend + ': obsarch ingest, command (re-scan)':46}{rescan:9.2f}{n / rescan:10.0f}")
        print(f"{backend + ': Catalog.ingest, in Python (first scan)':46}{lib_first:9.2f}{n / lib_first:10.0f}")
        print(f"{backend + ': Catalog.ingest, in Python (re-scan)':46}{lib_rescan:9.3f}{n / lib_rescan:10.0f}")
        if None not in peers:
            command = [p / f for p, f, *_ in rows]
            library = [p / f for p, _, _, f, _ in rows]
            print(f"{backend}: first scan {statistics.median(command):.1f}x ImageFileCollection via the command "
                  f"(rounds {min(command):.1f}-{max(command):.1f}x), {statistics.median(library):.1f}x in Python")
        cards, seconds = storage_floor(backend, catalogs[backend])
        versus = f", {peer / seconds:.1f}x ImageFileCollection" if None not in peers else ""
        print(f"{backend}: storage floor: the database alone storing the same {cards} card rows in one transaction "
              f"and building their keys and indexes took {seconds:.2f} s: one writer stores at most "
              f"{n / seconds:.0f} files/s{versus}, with reading the files free", flush=True)
    print(f"a command's start-up alone (obsarch --version): {time_startup():.2f} s", flush=True)


def storage_floor(backend: str, url: str) -> tuple[int, float]:
    """(card rows, seconds): what the database alone takes to store the card
    rows a first ingest stored in the catalog at ``url``, in one transaction
    into an empty table of the same definition, and to build the same keys
    and indexes after the load (as a first ingest does). Nothing of obsarch
    runs: no reading, no Python per row. A bound on any ingest that keeps
    one row per card with these indexes."""
    if backend == "sqlite":
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as catalog:
            statements = [sql for (sql,) in catalog.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'header_cards' AND sql IS NOT NULL ORDER BY type DESC")]
            cards = catalog.execute("SELECT count(*) FROM header_cards").fetchone()[0]
            page_size = catalog.execute("PRAGMA page_size").fetchone()[0]
        floor_path = Path(path).with_suffix(".floor.db")
        conn = sqlite3.connect(floor_path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={page_size}")  # as the catalog
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(statements[0])  # the table (ORDER BY type DESC: 'table' before 'index')
            conn.execute("ATTACH ? AS catalog", (path,))
            start = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO main.header_cards SELECT * FROM catalog.header_cards")
            conn.execute("COMMIT")
            for statement in statements[1:]:
                conn.execute(statement)
            return cards, time.perf_counter() - start
        finally:
            conn.close()
            floor_path.unlink(missing_ok=True)
    import io

    import psycopg

    with psycopg.connect(url) as conn:
        rows = io.BytesIO()
        with conn.cursor().copy("COPY header_cards TO STDOUT") as copy:
            for block in copy:
                rows.write(block)
        cards = conn.execute("SELECT count(*) FROM header_cards").fetchone()[0]
        indexes = [sql for (sql,) in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'header_cards'")]
        conn.execute("CREATE TABLE floor_cards (LIKE header_cards)")  # columns only: no key, no index
        conn.commit()
        start = time.perf_counter()
        with conn.cursor().copy("COPY floor_cards FROM STDIN") as copy:
            view = rows.getbuffer()
            for offset in range(0, len(view), 1 << 20):
                copy.write(view[offset : offset + (1 << 20)])
            del view
        conn.commit()
        conn.execute("SET maintenance_work_mem = '256MB'")  # as the ingest's index builds
        for definition in indexes:  # the primary key's unique index among them
            conn.execute(_floor_index(definition))
        conn.execute("ALTER TABLE floor_cards ADD FOREIGN KEY (file_id, hdu_index) REFERENCES hdus (file_id, hdu_index)")
        conn.commit()
        seconds = time.perf_counter() - start
        conn.execute("DROP TABLE floor_cards")
        conn.commit()
        return cards, seconds


def _floor_index(definition: str) -> str:
    """A header_cards index definition (pg_indexes) made on floor_cards."""
    import re

    return re.sub(r"INDEX (\S+) ON (\S+\.)?header_cards", r"INDEX floor_\1 ON floor_cards", definition, count=1)


def big_tree(args, backends: Backends, work: Path) -> None:
    """Re-scan of --rescan-files unchanged files; peak memory of a first
    ingest of --rss-files (the re-scan tree and more beside it)."""
    tree = work / "tree"
    start = time.perf_counter()
    make_files(tree / "a", args.rescan_files, seed=3)
    if args.rss_files > args.rescan_files:
        make_files(tree / "b", args.rss_files - args.rescan_files, seed=4)
    print(f"\nmade {args.rescan_files} + {max(0, args.rss_files - args.rescan_files)} files in {time.perf_counter() - start:.0f} s", flush=True)
    small_peaks = {}
    for backend in backends.names:
        url = backends.url(backend, "small")
        init_catalog(url)
        small_peaks[backend] = peak_memory(url, work / "frames")
    for backend in backends.names:
        if args.rescan_files:
            url = backends.url(backend, "rescan")
            init_catalog(url)
            first = time_obsarch(url, tree / "a")
            rescans = [time_obsarch(url, tree / "a") for _ in range(7)]
            rescan = statistics.median(rescans)
            print(f"{backend}: re-scan of {args.rescan_files} unchanged files via the command {rescan:.2f} s "
                  f"(runs {min(rescans):.2f}-{max(rescans):.2f} s), {first / rescan:.0f}x faster than its first scan "
                  f"{first:.1f} s ({args.rescan_files / first:.0f} files/s)", flush=True)
        if args.rss_files:
            url = backends.url(backend, "rss")
            init_catalog(url)
            seconds, largest, total, proportional = peak_memory(url, tree)
            _, s_largest, s_total, s_proportional = small_peaks[backend]
            print(f"{backend}: first ingest of {args.rss_files} files ({seconds:.0f} s): peak RSS {largest:.0f} MB "
                  f"(largest process), {total:.0f} MB (command and workers summed, shared pages counted in each), "
                  f"peak PSS summed {proportional:.0f} MB (the memory they take together; target under 500 MB); "
                  f"the same command on the {args.single + args.multi} files: {s_largest:.0f}, {s_total:.0f}, "
                  f"{s_proportional:.0f} MB", flush=True)
    shutil.rmtree(tree, ignore_errors=True)


PROMOTED = ("CCD-TEMP", "OBSERVER")  # the keywords of SELECTIONS but KEY007, a selective one


def queries(args, backends: Backends) -> None:
    from archive.catalog import Catalog
    from archive.promoted import promote

    results = {}
    for backend in backends.names:
        url = backends.url(backend, "big")
        start = time.perf_counter()
        (load_sqlite if backend == "sqlite" else load_postgresql)(url, args.exposures, args.cards)
        print(f"\n{backend}: {args.exposures} exposures x {args.cards} cards loaded in {time.perf_counter() - start:.0f} s; "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
        catalog = Catalog(url)
        for layout in ("cards", "promoted"):
            if layout == "promoted":  # the hot keywords kept in indexed exposure columns too (obsarch db promote)
                for keyword in PROMOTED:
                    start = time.perf_counter()
                    promoted = promote(catalog.engine, keyword)
                    print(f"{backend}: obsarch db promote {keyword}: {time.perf_counter() - start:.1f} s "
                          f"({promoted.exposures} exposures, {promoted.kind})", flush=True)
            for selection in SELECTIONS:
                seconds, count = time_query(catalog, selection)
                peer = time_fetch_ids(catalog, count)
                results.setdefault((layout, selection), {})[backend] = seconds
                print(f"{backend} ({layout}): {selection!r:54} {seconds * 1000:7.1f} ms  ({count} exposures; "
                      f"fetching {count} ids by primary key {peer * 1000:.1f} ms)")
                print(f"    plan: {plan_shape(catalog, selection)}", flush=True)
        catalog.engine.dispose()
    print("\nside by side (ms): " + ", ".join(f"{b} cards, {b} promoted" for b in backends.names)
          + f"; load average {os.getloadavg()[0]:.1f}")
    for selection in SELECTIONS:
        print(f"  {selection!r:54} " + "  ".join(f"{results[(layout, selection)][b] * 1000:7.1f}"
                                                 for b in backends.names for layout in ("cards", "promoted")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=5000)
    parser.add_argument("--multi", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="times every reader is timed")
    parser.add_argument("--rescan-files", type=int, default=48_000)
    parser.add_argument("--rss-files", type=int, default=100_000)
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=12, help="cards per exposure in the query catalog")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("OBSARCH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-"))
    backends = Backends(work, args.backends.split(","), args.pg_url)
    try:
        data = work / "frames"
        make_files(data, args.single, args.multi)
        n = args.single + args.multi
        for path in data.iterdir():  # warm cache for every reader
            path.read_bytes()
        print(f"{n} files ({args.single} single-HDU, {args.multi} with 4 extensions), ~150 cards per header, "
              f"{os.cpu_count()} cores; backends: {', '.join(backends.names)}", flush=True)
        if args.rounds and n:
            ingest_rounds(args, backends, data, n)
            changed_files(backends, data, n)
        if args.rescan_files or args.rss_files:
            big_tree(args, backends, work)
        if args.exposures:
            queries(args, backends)
    finally:
        backends.drop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
