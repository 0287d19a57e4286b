"""Scanning directories into the catalog, incrementally.

A scan stats every file under the given paths and compares with the catalog:
new files and files whose size or mtime changed are read (headers only, in
worker processes); vanished files are marked missing; unchanged files cost a
stat. One process writes, in batches, each batch one transaction: a scan
killed at any point leaves every file either fully stored or not at all, and
the next scan completes the rest. Two scans of the same tree at once both
finish: inserts skip rows the other scan already wrote, and a changed file is
re-checked under a lock before its new version replaces the old.
"""

from __future__ import annotations

import collections
import gc
import getpass
import itertools
import multiprocessing
import operator
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
import warnings as pywarnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, Text, bindparam, cast, delete, func, insert, literal, select, update
from sqlalchemy.schema import CreateIndex

from archive import __version__, prescan, promoted
from archive.cardtext import CardText, card_text
from archive.db import (
    CARD_PKEY_INDEX,
    add_card_constraints,
    analyze_after_bulk_load,
    bulk_insert,
    card_index_names,
    copy_card_text,
    copy_scratch_cards,
    drop_card_constraints,
    fetch_tuples,
    insert_ignoring_conflicts,
    insert_new_rows,
    is_sqlite,
    lock_rows,
    missing_card_keys,
    process_alive,
    serialize,
    sql_datetime,
    transaction,
    utcnow,
    write_scratch_cards,
)
from archive.exceptions import DatabaseError, FitsReadError, NotFoundError, ObsarchError, UsageError
from archive.headers import read_headers
from archive.keywords import COLUMNS, KeywordMaps, NormalizationWarning, load_maps, normalize
from archive.models import Exposure, File, FileVersion, Hdu, HeaderCard, IngestError, IngestRun, Root, Run, postgresql_options
from archive.roots import root_of

# The tables, not the mapped classes: a statement over a class configures
# every mapper of the ORM first (~40 ms of each command's first statement).
FILES, ROOTS, INGEST_RUNS, RUNS = File.__table__, Root.__table__, IngestRun.__table__, Run.__table__
EXPOSURES, HDUS, HEADER_CARDS = Exposure.__table__, Hdu.__table__, HeaderCard.__table__
FILE_VERSIONS, INGEST_ERRORS = FileVersion.__table__, IngestError.__table__

FITS_SUFFIXES = (
    ".fits", ".fit", ".fts", ".fz", ".evt", ".pha", ".pi", ".lc", ".img",
    ".rmf", ".arf", ".bkg", ".rsp", ".mt", ".ds",
)  # fmt: skip
BATCH_FILES = int(os.environ.get("OBSARCH_INGEST_BATCH", "250"))
# A scan that reads at least this many files may load the card table
# without its indexes and build them after (_BulkChoice): inserting into
# three indexes halves the write rate (measured in benchmarks/ingest.py),
# building them afterwards sorts once.
BULK_MIN_FILES = int(os.environ.get("OBSARCH_BULK_MIN_FILES", "2000"))
# At most this many files read are held unstored while a re-read's bulk choice
# waits for its sample (_BulkChoice): ~15 KB of cards each.
HOLD_FILES = 2500
# PostgreSQL's statistics of keyword-value pairs cost seconds at any size
# (a fixed sample); a bulk load this large refreshes them, a smaller one
# leaves them to autovacuum or the next large load.
PAIR_STATISTICS_MIN_FILES = int(os.environ.get("OBSARCH_PAIR_STATISTICS_MIN_FILES", "20000"))
_IN_PROCESS_BELOW = 64  # fewer files than this are read without a pool
COPY_TEXT = "copy-text"  # read_chunk's card sink for PostgreSQL (see archive.cardtext)
CARD_COLUMNS = ("file_id", "hdu_index", "position", "keyword", "value_text", "value_num", "vtype", "comment")

Progress = Callable[[int, int], None]


@dataclass
class IngestSummary:
    run_id: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    failed: int = 0
    ignored: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the run changed beside the files (a demoted keyword)


@dataclass(slots=True)
class _Seen:
    """A file found on disk by the scan."""

    root_id: int
    relpath: str
    path: str
    size: int | None
    mtime_ns: int | None
    error: str | None = None


_SUFFIXES = frozenset(FITS_SUFFIXES)

try:
    from archive._scan import settle_unchanged as _settle_unchanged
except ImportError:  # built without a C compiler: os.scandir does it all
    _settle_unchanged = None


def is_fits_name(name: str) -> bool:
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    return lower.endswith(FITS_SUFFIXES)


# -- roots -------------------------------------------------------------------


def _root_for(conn: Connection, path: Path, now: datetime) -> tuple[int, Path]:
    """The root a scanned path belongs to: the deepest known root holding it,
    or a new root (the directory itself, or a file's parent)."""
    serialize(conn, "roots")  # two scans of one new directory make one root
    found = root_of(conn, path)
    if found:
        return found[0], found[1]
    new_root = path if path.is_dir() else path.parent
    conn.execute(insert_ignoring_conflicts(conn, ROOTS, ["path"]), [{"path": str(new_root), "created_at": now}])
    root_id = conn.execute(select(ROOTS.c.id).where(ROOTS.c.path == str(new_root))).scalar_one()
    return root_id, new_root


def move_root(engine: Engine, old: str | Path, new: str | Path) -> int:
    """Point the root at ``old`` to ``new`` (the tree was moved); return how
    many files it holds. Nothing is re-read."""
    old_path, new_path = Path(old).expanduser().resolve(), Path(new).expanduser().resolve()
    if not new_path.is_dir():
        raise NotFoundError(f"{new_path}: not a directory")
    with transaction(engine, write=True) as conn:
        root_id = conn.execute(select(ROOTS.c.id).where(ROOTS.c.path == str(old_path))).scalar()
        if root_id is None:
            known = ", ".join(p for (p,) in conn.execute(select(ROOTS.c.path))) or "none"
            raise NotFoundError(f"{old_path}: not a root of this catalog (roots: {known})")
        if conn.execute(select(ROOTS.c.id).where(ROOTS.c.path == str(new_path))).scalar() is not None:
            raise ObsarchError(f"{new_path}: already a root of this catalog")
        conn.execute(update(ROOTS).where(ROOTS.c.id == root_id).values(path=str(new_path)))
        return conn.execute(select(func.count()).where(FILES.c.root_id == root_id)).scalar_one()


# -- scanning ----------------------------------------------------------------


def _display_name(name: str) -> tuple[str, bool]:
    """The name as text, and whether it is valid UTF-8."""
    if name.isascii():  # nearly every name, and a re-scan looks at each one
        return name, True
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", errors="backslashreplace"), False


def _walk(directory: Path, prefix: str, ignored: list[str]) -> Iterator[tuple[str, os.DirEntry | None, str | None]]:
    """(relpath, entry, error) for every FITS-named file below ``directory``;
    other names go to ``ignored``. Directory symlinks are not followed (they
    could loop), and directories wait on a stack rather than in recursion:
    a tree 1,200 levels deep is a tree like any other."""
    stack = [(directory, prefix)]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield prefix.rstrip("/") or ".", None, f"cannot list directory: {exc.strerror}"
            continue
        below = []
        for entry in entries:
            name, valid = _display_name(entry.name)
            relpath = prefix + name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                below.append((Path(entry.path), relpath + "/"))
            elif is_fits_name(name):
                yield relpath, entry, None if valid else "file name is not valid UTF-8"
            else:
                ignored.append(relpath)
        stack.extend(reversed(below))


def _stat(entry: os.DirEntry) -> tuple[int | None, int | None, str | None]:
    try:
        st = entry.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader
            return st.st_size, st.st_mtime_ns, "not a regular file"
        return st.st_size, st.st_mtime_ns, None
    except FileNotFoundError:
        if entry.is_symlink():
            return None, None, f"broken symbolic link (to {os.readlink(entry.path)})"
        return None, None, "vanished during the scan"
    except OSError as exc:
        return None, None, f"cannot stat: {exc.strerror}"


def _scan(path: Path, root_id: int, root: Path, ignored: list[str]) -> list[_Seen]:
    seen = []
    if path.is_file() or path.is_symlink() and not path.is_dir():
        relpath = path.relative_to(root).as_posix()
        entry = next((e for e in os.scandir(path.parent) if e.name == path.name), None)
        walk = [(relpath, entry, None)] if entry else []
    else:
        prefix = "" if path == root else path.relative_to(root).as_posix() + "/"
        walk = _walk(path, prefix, ignored)
    for relpath, entry, error in walk:
        size = mtime = None
        if entry is not None and error is None:
            size, mtime, error = _stat(entry)
        # A name that is not UTF-8 is never read; it is shown and stored escaped.
        full = entry.path if entry is not None and _display_name(entry.path)[1] else str(root / relpath)
        seen.append(_Seen(root_id, relpath, full, size, mtime, error))
    return seen


def _entries(directory: str, wanted: set[str] | None, failed: list[OSError]) -> Iterator[os.DirEntry]:
    """The entries of ``directory`` one at a time (only the names in
    ``wanted``, if given): a directory of 100,000 files is never held as a
    list of entries (~50 MB that the process then keeps). An error listing
    it goes in ``failed``; the entries listed before it are kept."""
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if wanted is None or entry.name in wanted:
                    yield entry
    except OSError as exc:
        failed.append(exc)


def _scan_compare(
    path: Path, root_id: int, root: Path, stored: dict[str, tuple], ignored: list[str], listings: dict | None = None
) -> tuple[list[tuple[_Seen, tuple | None]], int]:
    """:func:`_scan` of a directory and the comparison with the stored rows
    (``stored``, {relpath: row}, loses every path found) in one pass, for a
    tree without inner roots. Returns the files to read or with a problem,
    each with its stored row (or None), and how many are unchanged: those
    cost a stat and a dict lookup, no object (a re-scan of 48,000 files).
    ``listings``: directories read ahead (:mod:`archive.prescan`), each
    used once, and only while the directory's (st_dev, st_ino, st_mtime_ns,
    st_ctime_ns) are as when it was read; the others are read here."""
    found: list[tuple[_Seen, tuple | None]] = []
    unchanged = 0
    pop, regular = stored.pop, stat.S_IFREG
    stack = [(str(path), "" if path == root else path.relative_to(root).as_posix() + "/")]
    while stack:
        directory, prefix = stack.pop()
        wanted = None
        if _settle_unchanged is not None and stored:  # compiled: the unchanged files settled in C, the rest below
            listing = None
            if listings:
                try:
                    st = os.stat(directory)
                    listing = listings.pop((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), None)
                except OSError:
                    pass
            settled, others = _settle_unchanged(os.fsencode(directory), prefix, stored, _SUFFIXES, listing=listing)
            if settled >= 0:
                unchanged += settled
                if not others:
                    continue
                wanted = set(map(os.fsdecode, others))
        below, here, failed = [], [], []
        for entry in _entries(directory, wanted, failed):
            name, valid = entry.name, True
            if not name.isascii():
                name, valid = _display_name(name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                below.append((entry.path, prefix + name + "/"))
                continue
            relpath = prefix + name
            if name[name.rfind(".") :] not in _SUFFIXES and not is_fits_name(name):  # the set: most names, at once
                ignored.append(relpath)
                continue
            row = pop(relpath, None)
            if not valid:
                size = mtime = None
                error = "file name is not valid UTF-8"
            else:
                try:
                    st = entry.stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                    error = None if st.st_mode & 0o170000 == regular else "not a regular file"
                except OSError:
                    size, mtime, error = _stat(entry)  # again, for the reason
                if error is None and row is not None and row[5] == "present" and row[3] == size and row[4] == mtime:
                    unchanged += 1
                    continue
            # A name that is not UTF-8 is never read; it is shown and stored escaped.
            full = entry.path if _display_name(entry.path)[1] else str(root / relpath)
            here.append((_Seen(root_id, relpath, full, size, mtime, error), row))
        if failed:
            relpath = prefix.rstrip("/") or "."
            found.append((_Seen(root_id, relpath, str(root / relpath), None, None,
                                f"cannot list directory: {failed[0].strerror}"), pop(relpath, None)))
        # in name order, files before the directories below (only what is
        # to read is sorted: a re-scan's listing of 48,000 names is not)
        found += sorted(here, key=lambda pair: pair[0].relpath)
        stack.extend(sorted(below, reverse=True))
    return found, unchanged


# -- reading (in workers) ----------------------------------------------------

_MAPS: KeywordMaps | None = None


def _init_worker(config: dict | None) -> None:
    global _MAPS
    _MAPS = load_maps(config)


def read_file(path: str, relpath: str) -> tuple:
    """Read one file's headers and normalize them: ``("ok", hash, hdus,
    exposure, warnings)`` or ``("error", reason)``. Runs in a worker."""
    try:
        units, header_hash = read_headers(path)
    except FitsReadError as exc:
        return ("error", str(exc))
    except OSError as exc:
        return ("error", f"cannot read: {exc.strerror or exc}")
    with pywarnings.catch_warnings(record=True) as unnormalized:
        pywarnings.simplefilter("always", NormalizationWarning)
        exposure = normalize(units, relpath, _MAPS or load_maps())
    hdus = [(u.index, u.extname, u.hdu_type, u.shape, u.bitpix, u.cards) for u in units]
    warnings = [f"HDU {u.index}: invalid card kept as text: {bad}" for u in units for bad in u.invalid]
    warnings += [str(w.message).removeprefix(f"{relpath}: ") for w in unnormalized if w.category is NormalizationWarning]
    return ("ok", header_hash, hdus, exposure, warnings)


def read_chunk(args: tuple[list[tuple[str, str]], str | None]) -> tuple[list[tuple], list[tuple] | str | CardText]:
    """Read a chunk of files. Returns one result per file (its HDUs without
    their cards) and the chunk's cards as ``(place of the file in the chunk,
    HDU index, cards)``: as such (``sink`` None), as COPY text (``sink`` is
    :data:`COPY_TEXT`), or written to a scratch SQLite file in the directory
    ``sink`` whose path is returned (then only small results cross the
    process boundary, and the writer copies the cards inside SQLite)."""
    tasks, sink = args
    results, cards = [], []
    for local, (path, relpath) in enumerate(tasks):
        result = read_file(path, relpath)
        if result[0] == "ok":
            status, header_hash, hdus, exposure, warnings = result
            cards.extend((local, index, hdu_cards) for index, _, _, _, _, hdu_cards in hdus)
            hdus = [(i, e, t, s, b, len(c)) for i, e, t, s, b, c in hdus]
            result = (status, header_hash, hdus, exposure, warnings)
        results.append(result)
    if sink == COPY_TEXT:
        return results, card_text(cards)
    if sink is not None and cards:
        return results, write_scratch_cards(sink, cards)
    return results, cards


@dataclass
class _Chunk:
    items: list[tuple[_Seen, tuple]]
    cards: list[tuple] | str | CardText


def _chunks(tasks: list[_Seen], size: int) -> list[list[_Seen]]:
    return [tasks[start : start + size] for start in range(0, len(tasks), size)]


def _read_all(
    tasks: list[_Seen], config: dict | None, workers: int | None, sink: str | None, scheduler: str | bool | None = None
) -> Iterator[_Chunk]:
    if not tasks:
        return  # a re-scan with nothing new: not even the keyword maps to load
    if scheduler is not None:
        yield from _read_on_dask(tasks, config, workers, sink, scheduler)
        return
    if len(tasks) < _IN_PROCESS_BELOW or workers == 1:
        _init_worker(config)
        for chunk in _chunks(tasks, BATCH_FILES):
            results, cards = read_chunk(([(t.path, t.relpath) for t in chunk], sink if sink == COPY_TEXT else None))
            yield _Chunk(list(zip(chunk, results)), cards)
        return
    workers = workers or os.cpu_count() or 1
    size = max(1, min(BATCH_FILES, len(tasks) // (workers * 4)))
    chunks = _chunks(tasks, size)
    args = (([(t.path, t.relpath) for t in chunk], sink) for chunk in chunks)  # made as sent: not one copy of every path
    with _forked_pool(workers, config) as pool:
        for chunk, (results, cards) in zip(chunks, _bounded_imap(pool, read_chunk, args, 3 * workers)):
            yield _Chunk(list(zip(chunk, results)), cards)


def _forked_pool(workers: int, config: dict | None):
    """A pool of reading processes, forked with the cycle collector's objects
    frozen (as the gc module's documentation advises before a fork): a
    worker's collections then never write to the objects it inherited, so
    the pages holding the scan of every file (100,000 files: ~100 MB) stay
    shared with this process instead of being copied into each worker. A
    caller that froze nothing itself (a library user) gets its objects back
    in the collector once the workers exist; the command line froze its
    start-up already and keeps this frozen too."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        return worker_pool(workers, _init_worker, (config,))
    finally:
        if not frozen_before:
            gc.unfreeze()


def worker_pool(processes: int, initializer: Callable | None = None, initargs: tuple = ()) -> multiprocessing.pool.Pool:
    """A process pool whose workers leave Ctrl-C to this process: a
    terminal sends SIGINT to every process of its group, and each worker
    then printed a traceback of its KeyboardInterrupt under the command's
    one line. Only this process is interrupted; leaving its ``with`` block
    ends the workers (Pool.__exit__ terminates them). Every
    pool of obsarch is made here (processing's too: archive imports no
    processing)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a worker forked before it ignores SIGINT would still die of one
    try:
        pool = multiprocessing.Pool(processes, initializer=_ignore_interrupts, initargs=(initializer, initargs))
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a Ctrl-C held meanwhile is raised here
    except KeyboardInterrupt:
        pool.terminate()
        raise
    return pool


def _ignore_interrupts(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: a SIGINT held since the fork is then discarded
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # SIGTERM (Pool.terminate) keeps its default, an immediate end: raised as
    # SystemExit, a worker waiting for its next task exited holding the task
    # queue's lock, and the other worker waited for it forever
    if initializer is not None:
        initializer(*initargs)


def _bounded_imap(pool, function: Callable, args: Iterable, window: int) -> Iterator:
    """``pool.imap(function, args)`` with at most ``window`` calls submitted
    and not yet consumed: imap reads ahead without limit, so when the writer
    is slower than the readers (PostgreSQL) every chunk's cards would pile up
    in this process's memory."""
    pending = iter(args)
    running = collections.deque(pool.apply_async(function, (arg,)) for arg in itertools.islice(pending, window))
    while running:
        result = running.popleft().get()
        running.extend(pool.apply_async(function, (arg,)) for arg in itertools.islice(pending, 1))
        yield result


def _read_on_dask(tasks: list[_Seen], config: dict | None, workers: int | None, sink: str | None, scheduler: str | bool) -> Iterator[_Chunk]:
    """Headers read on a dask cluster (``scheduler`` True: a local one);
    scratch files of a worker would not be seen by the writer, so SQLite
    gets its cards as tuples."""
    from archive.ingest_dask import read_on_dask

    chunks = _chunks(tasks, BATCH_FILES)
    args = [([(t.path, t.relpath) for t in chunk], sink if sink == COPY_TEXT else None) for chunk in chunks]
    address = scheduler if isinstance(scheduler, str) else None
    for index, (results, cards) in read_on_dask(args, config, address, workers):
        yield _Chunk(list(zip(chunks[index], results)), cards)


# -- writing (one process) ---------------------------------------------------


def _file_values(seen: _Seen, result: tuple, run_id: int, now: datetime) -> dict:
    ok = result[0] == "ok"
    warnings = result[4] if ok else []
    return {
        "size": seen.size,
        "mtime_ns": seen.mtime_ns,
        "header_hash": result[1] if ok else None,
        "status": "present" if ok else "unreadable",
        "error": "; ".join(warnings) if ok and warnings else None if ok else result[1],
        "last_seen": now,
        "run_id": run_id,
    }


# An exposure has the id of its file (one exposure per file): a header card's
# file_id is then directly the exposure it belongs to.
EXPOSURE_COLUMNS = ("id", "file_id", *COLUMNS, "sources")
_EXPOSURE_VALUES = operator.itemgetter(*EXPOSURE_COLUMNS[2:])
HDU_COLUMNS = ("file_id", "hdu_index", "extname", "hdu_type", "shape", "bitpix", "ncards")


class _Rows:
    """What one chunk adds, inserted table by table below the ORM: per-file
    statements cost more than parsing the headers."""

    def __init__(self) -> None:
        self.hdus: list[tuple] = []
        self.exposures: list[tuple] = []
        self.file_ids: dict[int, int] = {}  # place in the chunk -> file id

    def add(self, local: int, file_id: int, result: tuple, *, new_exposure: bool) -> None:
        _, _, hdus, exposure, _ = result
        self.file_ids[local] = file_id
        self.hdus.extend((file_id, *hdu) for hdu in hdus)
        if new_exposure:
            self.exposures.append((file_id, file_id, *_EXPOSURE_VALUES(exposure)))

    def flush(self, conn: Connection, cards: list[tuple] | str | CardText) -> None:
        bulk_insert(conn, "hdus", HDU_COLUMNS, self.hdus)
        if isinstance(cards, str):
            copy_scratch_cards(conn, self.file_ids)
        elif isinstance(cards, CardText):
            ids = self.file_ids
            copy_card_text(conn, ((ids[local], block) for local, block in cards.blocks if local in ids))
        else:
            ids = self.file_ids
            rows = [(ids[local], index, *card) for local, index, hdu in cards if local in ids for card in hdu]
            bulk_insert(conn, "header_cards", CARD_COLUMNS, rows)
        date_at = EXPOSURE_COLUMNS.index("date_obs")
        exposures = [
            (*row[:date_at], sql_datetime(conn, row[date_at]), *row[date_at + 1 :]) for row in self.exposures
        ]
        bulk_insert(conn, "exposures", EXPOSURE_COLUMNS, exposures)


def _update_exposures(conn: Connection, exposures: dict[int, dict]) -> None:
    """Put the normalized values ``exposures`` ({file id: values}) in their
    exposures, making those missing; a statement per set of names, not per file."""
    if not exposures:
        return
    existing = set(conn.execute(select(EXPOSURES.c.file_id).where(EXPOSURES.c.file_id.in_(list(exposures)))).scalars())
    missing = [{"id": file_id, "file_id": file_id, **values} for file_id, values in exposures.items() if file_id not in existing]
    by_names: dict[tuple, list[dict]] = {}
    for file_id, values in exposures.items():
        if file_id in existing:
            by_names.setdefault(tuple(values), []).append({"b_file_id": file_id, **values})
    for params in by_names.values():
        conn.execute(update(EXPOSURES).where(EXPOSURES.c.file_id == bindparam("b_file_id")), params)
    for row in missing:
        conn.execute(insert(EXPOSURES).values(**row))


def _archive_version(conn: Connection, file_row, now: datetime, run_id: int | None) -> None:
    """Keep the headers a file had before they are replaced."""
    _archive_versions(conn, [file_row], now, run_id)


def _archive_versions(conn: Connection, file_rows: list, now: datetime, run_id: int | None) -> None:
    """Keep the headers the files (rows of ``files``) had in
    ``file_versions``, and take their cards and HDUs away for the new ones:
    a statement for all, not one per file (a re-read of 3,000 changed files
    spent 9 s of 12 in per-file statements). Each file's headers are made
    into JSON by the database, where they are: the cards of 3,000 files
    through Python and json took 1.1 s of a 3.3 s re-read."""
    if not file_rows:
        return
    ids = [row.id for row in file_rows]
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        headers = _headers_json(conn, batch)
        conn.execute(insert(FILE_VERSIONS).from_select(
            ["file_id", "version", "size", "mtime_ns", "header_hash", "headers_json", "replaced_at", "run_id"],
            select(FILES.c.id, FILES.c.version, FILES.c.size, FILES.c.mtime_ns, FILES.c.header_hash, headers.c.headers,
                   literal(now, FILE_VERSIONS.c.replaced_at.type), literal(run_id, FILE_VERSIONS.c.run_id.type))
            .join(headers, headers.c.file_id == FILES.c.id)  # a file without cards has no headers to keep
        ))
        conn.execute(delete(HEADER_CARDS).where(HEADER_CARDS.c.file_id.in_(batch)))
        conn.execute(delete(HDUS).where(HDUS.c.file_id.in_(batch)))


def _headers_json(conn: Connection, ids: list[int]):
    """A subquery (file_id, headers): the headers of the files ``ids`` that
    have cards, each as JSON text {"HDU index": [[position, keyword, value
    text, comment], ...]} in card order."""
    cards = HEADER_CARDS.c
    if is_sqlite(conn):
        # SQLite (before 3.44) orders no aggregate's input: grouped on a prefix of the table's key, with the
        # files found by that key, each HDU's cards come in key order, so in card order, and with no sort
        # between (EXPLAIN QUERY PLAN: no temporary B-tree for the inner GROUP BY; over an ordered subquery
        # there was one; test_ingest checks it). Each card also carries its position. The HDUs of a file
        # are grouped through a sort, which keeps them in order too, though a JSON object has no order.
        card = func.json_array(cards.position, cards.keyword, cards.value_text, cards.comment)
        hdus = (select(cards.file_id, cards.hdu_index, func.json_group_array(card).label("cards"))
                .where(cards.file_id.in_(ids)).group_by(cards.file_id, cards.hdu_index).subquery())
        headers = func.json_group_object(hdus.c.hdu_index, func.json(hdus.c.cards))
    else:
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        card = func.json_build_array(cards.position, cards.keyword, cards.value_text, cards.comment)
        hdus = (select(cards.file_id, cards.hdu_index, func.json_agg(aggregate_order_by(card, cards.position)).label("cards"))
                .where(cards.file_id.in_(ids)).group_by(cards.file_id, cards.hdu_index).subquery())
        headers = cast(func.json_object_agg(hdus.c.hdu_index, aggregate_order_by(hdus.c.cards, hdus.c.hdu_index)), Text)
    return select(hdus.c.file_id, headers.label("headers")).group_by(hdus.c.file_id).subquery()


def _store_chunk(engine: Engine, chunk: _Chunk, known: dict, run_id: int, summary: IngestSummary) -> None:
    """Store a chunk in one transaction; when the catalog refuses it, store
    its files one at a time, so that only the file it refuses is recorded
    (with the reason). The counts say what was stored: each transaction's
    are added to ``summary`` once it committed."""
    try:
        try:
            _write_chunk(engine, chunk, known, run_id, summary)
            return
        except DatabaseError:
            pass
        for local, (seen, _) in enumerate(chunk.items):
            try:
                _write_chunk(engine, chunk, known, run_id, summary, only={local})
            except DatabaseError as exc:
                refused = _Chunk([(seen, ("error", f"the catalog refused it: {exc}"))], [])
                _write_chunk(engine, refused, known, run_id, summary)
    finally:
        if isinstance(chunk.cards, str) and os.path.exists(chunk.cards):
            os.unlink(chunk.cards)


def _add(summary: IngestSummary, tally: IngestSummary) -> None:
    """The counts of a committed transaction (``tally``) added to the run's."""
    for name in ("new", "changed", "unchanged", "failed"):
        setattr(summary, name, getattr(summary, name) + getattr(tally, name))
    summary.errors += tally.errors


def _write_chunk(engine: Engine, chunk: _Chunk, known: dict, run_id: int, summary: IngestSummary,
                 only: set[int] | None = None) -> None:
    """Store one chunk (or its files at the places ``only``) in one
    transaction: a kill leaves each file whole or absent."""
    now = utcnow()
    scratch = chunk.cards if isinstance(chunk.cards, str) else None
    items = [(i, item) for i, item in enumerate(chunk.items) if only is None or i in only]
    new = [(i, s, r) for i, (s, r) in items if (s.root_id, s.relpath) not in known]
    old = [(i, s, r) for i, (s, r) in items if (s.root_id, s.relpath) in known]
    # A chunk of new files only inserts, each row after its parent (file,
    # HDUs, then cards): SQLite's check of every card's foreign key would
    # cost twice the copy, so it is off and the copy checks the HDUs once
    # (copy_scratch_cards). A chunk that replaces stored files deletes rows
    # and keeps the checks.
    tally = IngestSummary(run_id)  # added to the run's once committed: a rollback counts nothing
    with transaction(engine, write=True, attach=scratch, foreign_keys=bool(old)) as conn:
        if not is_sqlite(conn):
            # Committed without waiting for the WAL to reach disk: a server
            # crash may lose the last chunks (whole; the next scan reads them
            # again), never part of one. The run's last commit waits for all.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        rows_out = _Rows()
        if new:
            rows = [
                {"root_id": s.root_id, "relpath": s.relpath, "first_seen": now, "version": 1, **_file_values(s, r, run_id, now)}
                for _, s, r in new
            ]
            returned = insert_new_rows(conn, FILES, ["root_id", "relpath"], rows, ["id", "root_id", "relpath"])
            inserted = {(root_id, relpath): fid for fid, root_id, relpath in returned}
            for local, seen, result in new:
                file_id = inserted.get((seen.root_id, seen.relpath))
                if file_id is None:  # a concurrent scan stored it first
                    tally.unchanged += 1
                    continue
                _count(conn, tally, seen, result, file_id, run_id, now, "new")
                if result[0] == "ok":
                    rows_out.add(local, file_id, result, new_exposure=True)
        _replace(conn, old, known, run_id, now, tally, rows_out)
        rows_out.flush(conn, chunk.cards)
    _add(summary, tally)
    if scratch and only is None:
        os.unlink(scratch)


def _replace(
    conn: Connection, old: list[tuple[int, _Seen, tuple]], known: dict, run_id: int, now: datetime, summary: IngestSummary,
    rows: _Rows,
) -> None:
    """Store the new reads ``old`` ([(place in the chunk, seen, result)]) of
    files the catalog holds: their rows locked and read at once, the
    previous headers of those whose header changed kept as versions, every
    row updated; a few statements for the chunk, not several per file."""
    if not old:
        return
    ids = [known[(seen.root_id, seen.relpath)] for _, seen, _ in old]
    stored = {}
    for start in range(0, len(ids), 500):
        stored.update((row.id, row) for row in conn.execute(lock_rows(select(FILES).where(FILES.c.id.in_(ids[start : start + 500])), conn)))
    archive, exposures, updates, counted_as = [], {}, [], []
    for (local, seen, result), file_id in zip(old, ids):
        row = stored[file_id]
        if row.status == "present" and (row.size, row.mtime_ns) == (seen.size, seen.mtime_ns) and row.run_id != run_id:
            summary.unchanged += 1  # a concurrent scan already stored this version
            continue
        values = {**_file_values(seen, result, run_id, now), "header_hash": row.header_hash, "version": row.version}
        if result[0] == "ok" and row.header_hash is not None and row.header_hash == result[1] and row.mtime_ns is not None:
            # The same header bytes (a file touched, copied again, its pixels rewritten): its cards and HDUs
            # stay, and no copy of them is kept; the version moves on (metrics and X-ray summaries of its
            # pixels are matched to it, and are made again) and the exposure is normalized again (the config
            # may have changed). A file whose mtime a migration forgot is read again whole: its cards were
            # stored wrongly by an earlier obsarch (migration 0022)
            values["version"] = row.version + 1
            exposures[file_id] = result[3]
        elif result[0] == "ok":
            if row.header_hash is not None:
                archive.append(row)
                values["version"] = row.version + 1
            values["header_hash"] = result[1]
            rows.add(local, file_id, result, new_exposure=False)
            exposures[file_id] = result[3]
        # else: what was stored from the last good read is kept; only what is wrong is said
        updates.append({"b_id": file_id, **values})
        counted_as.append((seen, result, file_id))
    _archive_versions(conn, archive, now, run_id)
    _update_exposures(conn, exposures)
    if updates:
        conn.execute(update(FILES).where(FILES.c.id == bindparam("b_id")), updates)
    for seen, result, file_id in counted_as:
        _count(conn, summary, seen, result, file_id, run_id, now, "changed")


def _count(conn, summary: IngestSummary, seen: _Seen, result: tuple, file_id: int, run_id: int, now: datetime, kind: str) -> None:
    if result[0] == "ok":
        setattr(summary, kind, getattr(summary, kind) + 1)
        reasons = result[4]
    else:
        summary.failed += 1
        reasons = [result[1]]
    for reason in reasons:
        summary.errors.append((seen.path, reason))
        conn.execute(insert(INGEST_ERRORS).values(run_id=run_id, file_id=file_id, path=seen.path, reason=reason, created_at=now))


# -- the card indexes --------------------------------------------------------


def card_indexes():
    """The header_cards indexes, as the models (and so the migrations) define them."""
    return sorted(HEADER_CARDS.indexes, key=lambda index: index.name)


def ensure_card_indexes(engine: Engine) -> None:
    """Create any card index a killed bulk load left missing (cheap when
    none is); on PostgreSQL, the card table's keys too (see
    :func:`ensure_card_keys`)."""
    if not is_sqlite(engine):
        ensure_card_keys(engine)
        return
    with transaction(engine) as conn:
        present = card_index_names(conn)
    for index in card_indexes():
        if index.name not in present:
            with transaction(engine, write=True) as conn:  # each kept once made: an interrupt loses one build at most
                index.create(conn, checkfirst=True)


# At most this many card indexes are made at once, each on a connection of
# its own (the engine's pool holds 5 by default: one waits under the lock).
CARD_BUILDERS = 4


def ensure_card_keys(engine: Engine) -> None:
    """Make whatever a bulk load (perhaps killed) left missing of the card
    table's primary key, foreign key and indexes (PostgreSQL).

    The indexes, the primary key's among them, are made at once, each on a
    connection of its own (CREATE INDEX lets others build beside it): on
    450,000 cards and 2 cores, 0.62 s instead of 0.78 s one after the
    other, PostgreSQL's own parallel build included (its leader merges
    and writes an index alone, with a core to spare). The index then
    becomes the primary key, and the foreign key is added and validated,
    in one statement. Each step commits on its own, so a kill leaves the
    steps done, and the next ingest makes the rest; a lock held meanwhile
    lets one ingest at a time do this, and the others find it done."""
    with transaction(engine) as conn:
        missing = missing_card_keys(conn), card_index_names(conn)
    if not _card_work(*missing):
        return
    # their partial predicates, whichever way the engine was made (Catalog(engine=...) skips make_engine)
    postgresql_options()
    with transaction(engine, write=True) as lock:  # holds the lock only: the work is on other connections
        serialize(lock, "card indexes")  # concurrent ingests: one makes them, the others find them made
        (pkey, pkey_index, fkey), present = missing_card_keys(lock), card_index_names(lock)
        builds = [str(CreateIndex(index).compile(dialect=engine.dialect)) for index in card_indexes() if index.name not in present]
        builds += [CARD_PKEY_INDEX] if pkey_index else []
        spare = _spare_connections(engine)
        if not spare:  # a pool of one connection (Catalog(engine=...)): all on this one, in turn
            _sort_memory(lock)
            for statement in builds:
                lock.exec_driver_sql(statement)
            add_card_constraints(lock, pkey=pkey, fkey=fkey)
            return
        _build_at_once(engine, builds, spare)
        _with_deadlock_retry(lambda: _add_keys(engine, pkey, fkey))


def _add_keys(engine: Engine, pkey: bool, fkey: bool) -> None:
    with transaction(engine, write=True) as conn:
        add_card_constraints(conn, pkey=pkey, fkey=fkey)


DEADLOCK_RETRIES = 5


def _with_deadlock_retry(work: Callable[[], None]) -> None:
    """Run ``work`` (one transaction) again when PostgreSQL ends it as one
    side of a deadlock. Adding the foreign key takes hdus, then
    header_cards; a chunk writing new files takes them in that order too,
    but one replacing a changed file deletes its cards before its HDUs, the
    other order. No single order suits both, and the chunk side already
    retries file by file, so the key's side retries too."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            work()
            return
        except DatabaseError as exc:
            cause = getattr(exc.__cause__, "orig", exc.__cause__)  # SQLAlchemy's, or the driver's own
            if attempt == DEADLOCK_RETRIES - 1 or getattr(cause, "sqlstate", None) != "40P01":
                raise
            time.sleep(0.05 * (attempt + 1))


def _card_work(keys: tuple[bool, bool, bool], present: set[str]) -> bool:
    return any(keys) or any(index.name not in present for index in card_indexes())


def _spare_connections(engine: Engine) -> int:
    """How many more connections the engine's pool opens without waiting
    for one to be returned, up to :data:`CARD_BUILDERS`."""
    from sqlalchemy.pool import NullPool, QueuePool

    pool = engine.pool
    if isinstance(pool, NullPool):
        return CARD_BUILDERS
    if not isinstance(pool, QueuePool):  # one connection for all (StaticPool, SingletonThreadPool)
        return 0
    overflow = getattr(pool, "_max_overflow", 0)  # not public: its size() is the part kept open
    if overflow < 0:
        return CARD_BUILDERS
    return max(0, min(CARD_BUILDERS, pool.size() + overflow - pool.checkedout()))


def _build_at_once(engine: Engine, statements: list[str], at_once: int) -> None:
    """Run each CREATE INDEX in a transaction of its own, up to ``at_once``
    at a time; the first error is raised once all ended.

    A Ctrl-C while they run asks the server to cancel each build (psycopg's
    ``cancel``, made for another thread to call) before it is raised: the
    builds roll back at once instead of holding the exit until they end,
    which at tens of millions of cards is minutes. The next ingest makes
    what is missing (ensure_card_keys)."""
    running: list = []  # the DBAPI connections of the builds under way

    def build(statement: str) -> None:
        with transaction(engine, write=True) as conn:
            _sort_memory(conn, SORT_MEMORY_MB // min(at_once, len(statements)))  # the server's total stays as for one
            running.append(conn.connection.driver_connection)
            conn.exec_driver_sql(statement)

    if len(statements) <= 1 or at_once <= 1:
        for statement in statements:
            build(statement)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(min(at_once, len(statements)), thread_name_prefix="obsarch-index")
    try:
        futures = [pool.submit(build, statement) for statement in statements]
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for connection in list(running):
            try:
                connection.cancel()
            except Exception:  # noqa: BLE001  (a build that just ended: nothing to cancel)
                pass
        raise
    for future in futures:
        future.result()


class CardTableBusy(Exception):
    """The card table stayed in use past BULK_LOCK_TIMEOUT_S: its indexes
    and keys stay, and the load goes in with them (slower, never stuck)."""


BULK_LOCK_TIMEOUT_S = 5


@contextmanager
def _bulk_ddl(engine: Engine) -> Iterator[Connection]:
    """A transaction that drops card indexes or keys for a bulk load. On
    PostgreSQL it waits at most BULK_LOCK_TIMEOUT_S for the card table: an
    open transaction that read it (a notebook, psql) would hold the drop,
    and every keyword query queued behind the drop, for as long as it stays
    open. Concurrent ingests still take turns (their lock is taken first)."""
    try:
        with transaction(engine, write=True) as conn:
            serialize(conn, "card indexes")
            if not is_sqlite(conn):
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{BULK_LOCK_TIMEOUT_S}s'")
            yield conn
    except DatabaseError as exc:
        if "lock timeout" not in str(exc):
            raise
        raise CardTableBusy() from None


def _drop_card_indexes(engine: Engine) -> None:
    with _bulk_ddl(engine) as conn:
        names = [index.name for index in card_indexes()]
        # IF EXISTS rather than Index.drop(checkfirst=True), which asks the
        # catalog for each (~20 ms of every first ingest on PostgreSQL)
        for statement in [names] if not is_sqlite(conn) else [[name] for name in names]:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {', '.join(statement)}")


def _analyze(engine: Engine, n_read: int) -> None:
    with transaction(engine, write=True) as conn:
        # Under the lock of the card keys' DDL: holding hdus (analyzed) while
        # waiting for header_cards, whose keys another ingest is adding with
        # a foreign key to hdus, was a deadlock.
        serialize(conn, "card indexes")
        analyze_after_bulk_load(conn, card_pairs=n_read >= PAIR_STATISTICS_MIN_FILES)


def ensure_card_constraints(engine: Engine) -> None:
    """Add back the card table's keys a bulk load dropped (PostgreSQL; see
    :func:`archive.db.drop_card_constraints`), with any missing card index
    (:func:`ensure_card_keys`)."""
    if not is_sqlite(engine):
        ensure_card_keys(engine)


SORT_MEMORY_MB = 256  # for the index builds of a bulk load, shared by those made at once


def _sort_memory(conn: Connection, megabytes: int = SORT_MEMORY_MB) -> None:
    """More memory for PostgreSQL's sorts of an index build than its 64 MB
    default: a large card table's keys sort in fewer passes."""
    if not is_sqlite(conn):
        conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{max(64, int(megabytes))}MB'")


def _drop_card_constraints(engine: Engine, *, keep_primary: bool = False) -> None:
    with _bulk_ddl(engine) as conn:
        drop_card_constraints(conn, keep_primary=keep_primary)


def _begin_bulk(engine: Engine, summary: IngestSummary, *, replacing: bool) -> bool:
    """Drop the card indexes (and on PostgreSQL the keys, but the primary
    key when stored files are ``replacing``: theirs are found by it) for a
    bulk load; whether they were dropped. When another session holds the
    table, the load goes on with them in place, and says so."""
    busy = (f"the card table stayed in use for {BULK_LOCK_TIMEOUT_S} s (an open transaction: a psql or notebook "
            "session, a long query): loaded with its {} in place, slower")
    try:
        _drop_card_indexes(engine)
    except CardTableBusy:
        summary.notes.append(busy.format("indexes and keys"))
        return False
    try:
        _drop_card_constraints(engine, keep_primary=replacing)
    except CardTableBusy:  # the indexes are made again at the end, as after any bulk load
        summary.notes.append(busy.format("keys"))
    return True


def _rewriting(engine: Engine, chunk: _Chunk, known: dict) -> tuple[int, int]:
    """How many of the stored files in ``chunk`` were read, and how many of
    them write cards: those whose header changed (one touched, copied or
    with its pixels rewritten keeps its cards; one whose mtime a migration
    forgot is written again too, and not counted here: it costs only speed)."""
    read = {known[(seen.root_id, seen.relpath)]: result[1] if result[0] == "ok" else None for seen, result in chunk.items
            if (seen.root_id, seen.relpath) in known}
    hashes = {file_id: digest for file_id, digest in read.items() if digest is not None}  # one unreadable now keeps its cards
    if not hashes:
        return len(read), 0
    with transaction(engine) as conn:
        stored = dict(conn.execute(select(FILES.c.id, FILES.c.header_hash).where(FILES.c.id.in_(list(hashes)))).all())
    return len(read), sum(1 for file_id, digest in hashes.items() if stored.get(file_id) != digest)


class _BulkChoice:
    """Whether to load with the card indexes dropped and built again after.
    A build costs in proportion to the whole card table; kept, the indexes
    (and on PostgreSQL the foreign key, checked row by row) cost several
    times a build's share for every card written or replaced: 3,000 files
    re-read with a card changed spent 3.3 s (SQLite) and 6.1 s (PostgreSQL)
    writing and deleting their cards under them. So bulk once the files
    that write cards are a quarter of the catalog's files or more.

    A new file writes cards; a stored file read again writes them only if
    its header changed (touched files write none), which the chunks tell as
    they come. Once a tenth of the stored files to read again has been seen
    (in name order the first may all be one reprocessed night), the share
    of them that changed stands for the rest: the load turns bulk at the
    first chunk by which new and changed files reach the quarter (past
    25,000 files, the first HOLD_FILES stand for them). The chunks read
    before are held (:meth:`hold`), and stored bulk if it turns bulk. A
    wrong guess costs one build of the indexes."""

    SAMPLE = 10  # a tenth of the stored files to read again, seen before they stand for the rest

    def __init__(self, engine: Engine, to_read: list[_Seen], known: dict) -> None:
        self.stored_read = sum(1 for seen in to_read if (seen.root_id, seen.relpath) in known)
        self.new = len(to_read) - self.stored_read
        self.seen, self.changed = 0, 0
        self.catalog = None  # the catalog's files, asked only of a load that may turn bulk
        if len(to_read) >= BULK_MIN_FILES:
            with transaction(engine) as conn:
                self.catalog = conn.execute(select(func.count()).select_from(FILES)).scalar_one()
            if len(to_read) * 4 <= self.catalog:
                self.catalog = None  # too few to write a quarter of it, whatever they hold
        # whether the choice waits for its sample: the chunks read meanwhile are
        # held (up to HOLD_FILES), so that a re-read that does turn bulk loads them bulk too
        self.waiting = self.catalog is not None and self.stored_read > 0 and self.new * 4 <= self.catalog

    def hold(self, held: int, chunk: _Chunk) -> bool:
        """Whether ``chunk`` is held unstored, beside ``held`` files held
        already, until the choice is made. Not its cards as tuples (read in
        this process or on dask, for SQLite): ~75 KB a file."""
        if self.waiting and (held + len(chunk.items) > HOLD_FILES or isinstance(chunk.cards, list) and chunk.cards):
            self.waiting = False  # stored as they come, and the choice goes on without holding
        return self.waiting

    def now(self, engine: Engine, chunk: _Chunk, known: dict) -> bool:
        """Whether the load turns bulk before storing ``chunk`` (a chunk of
        the files read): yes once at most."""
        if self.catalog is None:
            return False
        writing = self.new
        if self.stored_read and self.new * 4 <= self.catalog:
            seen, changed = _rewriting(engine, chunk, known)
            self.seen, self.changed = self.seen + seen, self.changed + changed
            if self.seen * self.SAMPLE < self.stored_read and self.seen < HOLD_FILES:
                return False
            self.waiting = False
            writing += self.changed * self.stored_read / self.seen
        if writing * 4 <= self.catalog:
            return False
        self.catalog = None  # decided
        return True


# -- the scan ----------------------------------------------------------------


SCRATCH_PREFIX = "obsarch-ingest-"


def remove_dead_scratch(directory: str | None = None) -> int:
    """Remove the scratch directories of ingests whose process is gone
    (killed: a finished ingest removes its own). Returns how many."""
    removed = 0
    base = Path(directory or tempfile.gettempdir())
    for candidate in base.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = candidate.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and candidate.is_dir() and not process_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed += 1
    return removed


def _start_run(engine: Engine, paths: list[Path]) -> int:
    host = socket.gethostname()
    with transaction(engine, write=True) as conn:
        if not is_sqlite(conn):
            # not waiting for the WAL flush (a re-scan's one commit besides the
            # last): the run's last commit flushes this row with the rest
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        _close_dead_runs(conn, host)
        return conn.execute(
            insert(INGEST_RUNS)
            .values(
                started_at=utcnow(), state="running", paths="\n".join(map(str, paths)), host=host,
                user=getpass.getuser(), pid=os.getpid(), code_version=__version__,
                n_new=0, n_changed=0, n_unchanged=0, n_missing=0, n_failed=0,
            )
            .returning(INGEST_RUNS.c.id)
        ).scalar_one()


def _close_dead_runs(conn: Connection, host: str) -> None:
    """Runs (ingests and processing steps) left 'running' by a process of
    this host that no longer exists were killed: say so."""
    for table in (INGEST_RUNS, RUNS):
        dead = [run_id for run_id, pid in conn.execute(
            select(table.c.id, table.c.pid).where(table.c.state == "running", table.c.host == host)) if not process_alive(pid)]
        if not dead:
            continue
        if table is RUNS:
            conn.execute(update(table).where(table.c.id.in_(dead)).values(
                state="interrupted", error="its process ended without finishing it (killed?)"))
            continue
        for run_id in dead:  # its counts as its chunks committed them: the files it wrote
            written = FILES.c.run_id == run_id
            new, changed, failed = conn.execute(select(
                func.count().filter(written, FILES.c.error.is_(None), FILES.c.version == 1),
                func.count().filter(written, FILES.c.error.is_(None), FILES.c.version > 1),
                func.count().filter(written, FILES.c.error.is_not(None)))).one()
            conn.execute(update(table).where(table.c.id == run_id).values(
                state="interrupted", n_new=new, n_changed=changed, n_failed=failed,
                error=f"its process ended without finishing it (killed?); {new + changed + failed} files were stored before"))


def _finish_run(engine: Engine, summary: IngestSummary, state: str, error: str | None = None) -> None:
    with transaction(engine, write=True) as conn:
        conn.execute(
            update(INGEST_RUNS)
            .where(INGEST_RUNS.c.id == summary.run_id)
            .values(
                finished_at=utcnow(), state=state, error=error, n_new=summary.new, n_changed=summary.changed,
                n_unchanged=summary.unchanged, n_missing=summary.missing, n_failed=summary.failed,
            )
        )


def _inner_roots(engine: Engine, root_id: int, root: Path, path: Path) -> dict[str, int]:
    """Roots inside the scanned ``path`` (a directory ingested before its
    parent), as {their path relative to ``root`` + '/': id}: their files stay
    theirs, so that a file has one row whichever directory was given first."""
    with transaction(engine) as conn:
        roots = conn.execute(select(ROOTS.c.id, ROOTS.c.path)).all()
    inner = {}
    for inner_id, inner_path in roots:
        candidate = Path(inner_path)
        if inner_id != root_id and (candidate == path or path in candidate.parents):
            inner[candidate.relative_to(root).as_posix() + "/"] = inner_id
    return inner


def _rehome(seen: list[_Seen], inner: dict[str, int]) -> None:
    """Give each file found below an inner root to that root (the deepest)."""
    if not inner:
        return
    prefixes = sorted(inner, key=len, reverse=True)
    for item in seen:
        for prefix in prefixes:
            if item.relpath.startswith(prefix):
                item.root_id, item.relpath = inner[prefix], item.relpath[len(prefix):]
                break


def _plan(
    engine: Engine, paths: list[Path], summary: IngestSummary, ahead: prescan.Prescan | None = None
) -> tuple[list[_Seen], list[_Seen], dict, list[int]]:
    """Scan the paths; return (files to read, files with a problem, known ids, ids gone).
    ``ahead``: the paths' directories being read meanwhile (:mod:`archive.prescan`)."""
    planned = _plan_paths(engine, paths, summary, ahead)
    if ahead is not None:
        ahead.take(paths)  # its thread ended, before readers are forked
    prescan.join_stopped()  # and those of earlier ingests told to stop
    return planned


def _plan_paths(engine, paths, summary, ahead):
    to_read, bad, gone, ignored = [], [], [], []
    known: dict[tuple[int, str], int] = {}
    listings = None
    for path in paths:
        with transaction(engine, write=True) as conn:
            root_id, root = _root_for(conn, path, utcnow())
        prefix = "" if path == root else path.relative_to(root).as_posix()
        inner = _inner_roots(engine, root_id, root, path)
        with transaction(engine) as conn:
            # plain tuples: a re-scan compares every stored file, and Row
            # objects cost as much as the comparison
            stored = fetch_tuples(conn, select(FILES.c.root_id, FILES.c.relpath, FILES.c.id, FILES.c.size, FILES.c.mtime_ns,
                                               FILES.c.status).where(FILES.c.root_id.in_((root_id, *inner.values()))))
        if not inner and path.is_dir() and not path.is_symlink():
            by_relpath = {
                r[1]: r for r in stored if not prefix or r[1] == prefix or r[1].startswith(prefix + "/")
            }
            if listings is None:  # taken once the first stored rows are here: the reading went on meanwhile
                listings = ahead.take(paths) if ahead is not None else {}
            found, unchanged = _scan_compare(path, root_id, root, by_relpath, ignored, listings)
            summary.unchanged += unchanged
            for item, row in found:
                if row is not None:
                    known[(root_id, item.relpath)] = row[2]
                (bad if item.error else to_read).append(item)
            gone += [r[2] for r in by_relpath.values() if r[5] != "missing"]
            continue
        seen = _scan(path, root_id, root, ignored)
        _rehome(seen, inner)
        in_scope = {
            (r[0], r[1]): r for r in stored
            if r[0] != root_id or not prefix or r[1] == prefix or r[1].startswith(prefix + "/")
        }
        unchanged = summary.unchanged
        for item in seen:
            key = (item.root_id, item.relpath)
            row = in_scope.pop(key, None)  # what is left at the end is gone
            if row is not None and not item.error and row[5] == "present" and row[3] == item.size and row[4] == item.mtime_ns:
                unchanged += 1
                continue
            if row is not None:
                known[key] = row[2]
            (bad if item.error else to_read).append(item)
        summary.unchanged = unchanged
        gone += [r[2] for r in in_scope.values() if r[5] != "missing"]
    summary.ignored = len(ignored)
    return to_read, bad, known, gone


def ingest(
    engine: Engine,
    paths: list[str | Path],
    *,
    config: dict | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    executor: str = "pool",
    scheduler: str | None = None,
    ahead: prescan.Prescan | None = None,
) -> IngestSummary:
    """Scan ``paths`` (directories or files) into the catalog.

    Headers are read by a pool of ``workers`` processes (``executor``
    ``pool``), or on the workers of the dask.distributed scheduler at
    ``scheduler`` (``executor`` ``dask``; a local cluster of ``workers``
    processes when no scheduler is given); this process writes.
    Returns the counts of new, changed, unchanged, missing and failed files;
    the same counts are stored on the ingest run. ``ahead``: these paths'
    directories already being read (:func:`archive.prescan.start`, as the
    command does while it imports; stopped here if the ingest fails);
    otherwise they are read meanwhile here.
    """
    reading = ahead
    try:
        if executor not in ("pool", "serial", "dask"):
            raise ObsarchError(f"unknown executor {executor!r} for ingest; use pool, serial or dask")
        if scheduler is not None and executor != "dask":
            raise ObsarchError("--scheduler needs --executor dask")
        if executor == "serial":
            workers = 1
        on_dask = (scheduler or True) if executor == "dask" else None
        started = datetime.now()
        resolved, directories = [], set()
        for p in paths:
            if not str(p).strip():  # Path("") is the current directory: an empty shell variable would scan it
                raise UsageError("ingest: an empty path names no file or directory (for this directory, say '.')")
            path = Path(p).expanduser().absolute()
            if not path.exists() and not path.is_symlink():
                raise NotFoundError(f"{path}: no such file or directory")
            if path.is_dir():
                resolved.append(path.resolve())
                directories.add(resolved[-1])
            else:
                resolved.append(path.parent.resolve() / path.name)
        resolved = _distinct(resolved, directories)
        if reading is None:
            reading = prescan.start(resolved)
        return _ingest_resolved(engine, resolved, config, workers, progress, on_dask, started, reading)
    except BaseException:
        if reading is not None:
            reading.stop()  # however the ingest ended before its scan took it; no reader is forked after it
        raise


def _distinct(paths: list[Path], directories: set[Path]) -> list[Path]:
    """The paths, each once, without those inside one of the ``directories``
    among them (``ingest night night/a.fits``): a file scanned twice would
    be counted twice, and a changed one would take two versions."""
    below = {str(directory) for directory in directories}
    kept, seen = [], set()
    for path in paths:  # a shell glob may give tens of thousands: strings and sets
        text = str(path)
        # a file the scan of its directory would not take (f1.raw) is read as named
        if text not in seen and not (below and _inside(text, below) and is_fits_name(path.name)):
            kept.append(path)
        seen.add(text)
    return kept


def _inside(path: str, directories: set[str]) -> bool:
    """Whether the absolute ``path`` lies below one of ``directories``."""
    while (parent := os.path.dirname(path)) != path:
        if parent in directories:
            return True
        path = parent
    return False


def _ingest_resolved(engine, resolved, config, workers, progress, on_dask, started, ahead) -> IngestSummary:
    remove_dead_scratch()
    ensure_card_indexes(engine)
    run_id = _start_run(engine, resolved)
    summary = IngestSummary(run_id=run_id)
    bulk, left = False, None
    try:
        to_read, bad, known, gone = _plan(engine, resolved, summary, ahead)
        choice = _BulkChoice(engine, to_read, known)
        total = len(to_read) + len(bad)
        done = 0
        scratch_dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") if is_sqlite(engine) else None
        try:
            bad_chunk = _Chunk([(item, ("error", item.error)) for item in bad], [])
            sink = scratch_dir if scratch_dir else COPY_TEXT
            held: list[_Chunk] = []  # read while the choice waits for its sample; stored once it is made
            for chunk in itertools.chain([bad_chunk] if bad else [], _read_all(to_read, config, workers, sink, on_dask)):
                if chunk is not bad_chunk:
                    if choice.now(engine, chunk, known):
                        bulk = True  # first: what an error leaves dropped is made again (finally)
                        bulk = _begin_bulk(engine, summary, replacing=choice.stored_read > 0)
                    if choice.hold(sum(len(c.items) for c in held), chunk):
                        held.append(chunk)
                        continue
                for ready in (*held, chunk):
                    _store_chunk(engine, ready, known, run_id, summary)
                    done += len(ready.items)
                    if progress:
                        progress(done, total)
                held = []
            for ready in held:  # the sample is part of what is read: none is left held, unless a count went wrong
                _store_chunk(engine, ready, known, run_id, summary)
                done += len(ready.items)
        finally:
            if scratch_dir:
                shutil.rmtree(scratch_dir, ignore_errors=True)
        if progress:
            progress(done, total)
        if gone:
            with transaction(engine, write=True) as conn:
                for start in range(0, len(gone), 500):
                    conn.execute(
                        update(FILES).where(FILES.c.id.in_(gone[start : start + 500])).values(status="missing", last_seen=utcnow())
                    )
            summary.missing = len(gone)
        statistics = bulk
        if bulk:  # every file stored: an error from here on is the run's, and says what it left
            bulk, left = False, "the next ingest builds the card indexes again"
            ensure_card_indexes(engine)
            left = "its cards indexed; the planner's statistics are those of before"
            _analyze(engine, len(to_read))
            left = None
        # after the card indexes are back: the promoted columns of the files written (archive.promoted);
        # a failed or interrupted run leaves its files to the next run's refresh
        summary.notes.extend(promoted.refresh(engine, run_id, statistics=statistics))
    except BaseException as exc:
        if ahead is not None:
            ahead.stop()  # before the run's record, which may wait for the database (ingest stops it too)
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        summary.seconds = (datetime.now() - started).total_seconds()
        error = f"{type(exc).__name__}: {exc}"
        if left:
            error += f"; every file was stored, and {left}"
        _finish_run(engine, summary, state, error)
        raise
    finally:
        if bulk:  # the load ended early: what it dropped is made again
            ensure_card_indexes(engine)
            _analyze(engine, len(to_read))
    summary.seconds = (datetime.now() - started).total_seconds()
    _finish_run(engine, summary, "done")
    return summary


