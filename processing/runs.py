"""Processing runs: every step records what it did, with which parameters and code."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, insert, update

from archive import __version__
from archive.db import process_alive, transaction, utcnow
from archive.models import Run, RunInput


def identity(params: dict, execution: dict) -> dict:
    """``params`` as they decide a product's identity: each execution-only
    knob (a memory budget, a chunk size: how a step runs, not what it makes)
    present is pinned to the value given in ``execution``, its default, so
    that changing it neither makes a second, identical product nor marks the
    first out of date. Pinned rather than dropped: products made before this
    rule were hashed with the default and stay up to date. The run still
    records the value it ran with (``runs.params_json``)."""
    return {**params, **{key: value for key, value in execution.items() if key in params}}


def params_hash(step: str, params: dict, algorithm: str) -> str:
    """A stable hash of a step's parameters and algorithm version: a result
    made with the same hash need not be made again."""
    text = json.dumps({"step": step, "params": params, "algorithm": algorithm}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class RunRecord:
    id: int
    step: str
    params: dict
    params_hash: str
    summary: dict = field(default_factory=dict)


@contextmanager
def recorded_run(engine: Engine, step: str, params: dict, algorithm: str) -> Iterator[RunRecord]:
    """Record a run of ``step``: 'running' now, then 'done' with its summary,
    or 'failed' / 'interrupted' with the error (which is raised again)."""
    digest = params_hash(step, params, algorithm)
    with transaction(engine, write=True) as conn:
        run_id = conn.execute(
            insert(Run)
            .values(
                step=step, params_json=json.dumps(params, sort_keys=True, default=str), params_hash=digest,
                code_version=f"{__version__} {algorithm}", host=socket.gethostname(), user=getpass.getuser(),
                pid=os.getpid(), started_at=utcnow(), state="running",
            )
            .returning(Run.id)
        ).scalar_one()
    record = RunRecord(run_id, step, params, digest)
    try:
        yield record
    except BaseException as exc:
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _finish(engine, record, state, f"{type(exc).__name__}: {exc}")
        raise
    _finish(engine, record, "done", None)


def _finish(engine: Engine, record: RunRecord, state: str, error: str | None) -> None:
    with transaction(engine, write=True) as conn:
        conn.execute(
            update(Run)
            .where(Run.id == record.id)
            .values(finished_at=utcnow(), state=state, error=error, summary_json=json.dumps(record.summary, default=str))
        )


# -- provenance -------------------------------------------------------------------------


def file_content(row) -> str:
    """What identifies a file's content without reading it: its header hash,
    size and modification time (any rewrite changes one of them)."""
    return f"{row.header_hash}:{row.size}:{row.mtime_ns}"


def fingerprint(step: str, params: dict, algorithm: str, contents: list[str]) -> str:
    text = json.dumps({"step": step, "params": params, "algorithm": algorithm, "code": __version__,
                       "inputs": sorted(contents)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def done_before(engine: Engine, print_: str) -> int | None:
    """The id of a done run with this fingerprint whose products are all on
    disk as that run left them."""
    from sqlalchemy import select

    from archive.models import File, Product

    with transaction(engine) as conn:
        for (run_id,) in conn.execute(
            select(Run.id).where(Run.fingerprint == print_, Run.state == "done").order_by(Run.id.desc())
        ):
            products = conn.execute(
                select(Product.path, Product.size, Product.mtime_ns, File.status, File.size, File.mtime_ns).select_from(Product)
                .outerjoin(File, File.id == Product.file_id).where(Product.run_id == run_id)
            ).all()
            if all(_as_made(*product) for product in products):
                return run_id
    return None


def _as_made(path: str, size: int | None, mtime_ns: int | None, status: str | None, file_size: int | None,
             file_mtime_ns: int | None) -> bool:
    """Whether a product is on disk as its run wrote it (its size and time
    then): a deleted master is made again, so is one found unreadable, and
    so is one written over since (by another run of the same path, by a run
    killed before it could record it, by hand; an ingest of the edit does
    not make it the run's). Up to date, it would be taken for what its run
    made. A product recorded before its size was (catalogs older than
    revision 0020) is compared with its files row."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    if status not in (None, "present"):
        return False
    if size is not None:
        return (now.st_size, now.st_mtime_ns) == (size, mtime_ns)
    if status is None:  # not catalogued (an external tool's output): on disk is all it can say
        return True
    return (now.st_size, now.st_mtime_ns) == (file_size, file_mtime_ns)


# The run this process writes products for (the step machinery sets it here and in
# each worker): every product's primary header carries it, so that a file a killed
# run left under a product's name (written, never recorded) is known for what it is
# (what_is_at: a 'leftover') instead of passing for a stranger's file.
STAMP_RUN, STAMP_START = "HIERARCH OBSARCH RUN", "HIERARCH OBSARCH RUN START"
_writing_for: tuple[int, str] | None = None


@contextmanager
def writing_for(stamp: tuple[int, str] | None):
    """Products written meanwhile carry ``stamp``: (run id, its start as
    stored, ISO 8601); see :func:`run_stamp`."""
    global _writing_for
    before, _writing_for = _writing_for, stamp
    try:
        yield
    finally:
        _writing_for = before


def run_stamp(conn, run_id: int) -> tuple[int, str]:
    """What a product of run ``run_id`` carries: its id and its start as the
    catalog stores it (a run id alone is only unique within one catalog)."""
    from sqlalchemy import select

    return run_id, conn.execute(select(Run.started_at).where(Run.id == run_id)).scalar_one().isoformat()


def stamp(header) -> None:
    """Write the run a product is written for into its primary ``header``
    (a stamp copied from an input's header never stays: it names another run)."""
    for key in (STAMP_RUN, STAMP_START):
        header.remove(key, ignore_missing=True, remove_all=True)
    if _writing_for is not None:
        header[STAMP_RUN] = (_writing_for[0], "obsarch run that wrote this file")
        header[STAMP_START] = (_writing_for[1], "its start, UTC")


def _stamped_by_an_unfinished_run(conn, path: str) -> tuple[int, str] | None:
    """The run that wrote the FITS file at ``path`` and has not recorded it,
    from its stamp, and its state: 'running' (it is storing it now, or it
    will), or 'interrupted' / 'failed' (killed, or failed after writing);
    None for any other file."""
    from astropy.io import fits
    from sqlalchemy import select

    from archive.ingest import is_fits_name

    if not is_fits_name(os.path.basename(path)):
        return None
    try:
        header = fits.getheader(path, 0)
        run_id, started = int(header[STAMP_RUN]), str(header[STAMP_START])
    except Exception:  # noqa: BLE001  (unreadable, no stamp, a stamp that is no number: not obsarch's to claim)
        return None
    row = conn.execute(select(Run.started_at, Run.state).where(Run.id == run_id)).first()
    if row is None or row.started_at.isoformat() != started or row.state not in ("running", "interrupted", "failed"):
        return None
    return run_id, row.state


def write_product(path, write) -> None:
    """Write a file atomically: ``write(tmp_path)`` then rename, so that an
    interrupted step leaves no half-written product under the real name."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for left in path.parent.glob(f".{path.name}.*.partial"):  # of a writer killed before it could clean up
        pid = left.name[len(path.name) + 2 : -len(".partial")]
        if pid.isdigit() and not process_alive(int(pid)):
            left.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextmanager
def claimed(paths, on_wait=None) -> Iterator[None]:
    """Hold ``paths`` (products a run means to write) against every other
    run that claims them, waiting for one that holds them (``on_wait(path)``
    is told first). Two runs of one step at once otherwise both found
    nothing made and made it, or the second found the first's file before
    its product was stored and refused it as a stranger's. The claim is a
    lock on a file ``.NAME.claim`` beside each path (flock: between
    processes and threads alike, let go by the kernel when its holder dies),
    removed by its holder."""
    from contextlib import ExitStack

    with ExitStack() as held:
        for path in sorted({Path(p) for p in paths}):  # in one order: two runs claiming two paths never wait on each other
            held.enter_context(_claim(path, on_wait))
        yield


@contextmanager
def _claim(path: Path, on_wait) -> Iterator[None]:
    import fcntl

    from archive.exceptions import ObsarchError

    lock = path.with_name(f".{path.name}.claim")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ObsarchError(f"{path}: cannot claim it for writing ({lock}): {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
                on_wait = None
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before removed the file it locked: this one is locked only if it is still the file there
            on_disk, mine = os.stat(lock), os.fstat(fd)
            if (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@dataclass(frozen=True)
class Occupant:
    """What occupies a path a step means to write (see :func:`what_is_at`).

    what : 'nothing', 'directory', 'raw' (a catalogued file no run made,
        even one gone from disk), 'product' (of ``kind``, made by run
        ``run_id`` from the raw ``frames``, file ids), 'leftover' (written
        by run ``run_id``, which ended before it recorded the file: killed),
        'writing' (written by run ``run_id``, still running, which has not
        recorded it yet) or 'foreign' (a file no run made and the catalog
        does not hold).
    """

    path: str
    what: str
    kind: str | None = None
    run_id: int | None = None
    frames: frozenset[int] = frozenset()
    frame_number: int | None = None

    def refusal(self, kind: str, frames: set[int] | None = None, force: bool = False) -> str | None:
        """Why a product of ``kind`` (made from ``frames``, when whose frames
        matter: a calibrated frame) may not replace what is here, or None.
        Its own earlier version may be replaced, and so may what a killed
        run left (nothing refers to it); anything else only with ``force``;
        a raw file of the catalog or a directory never."""
        if self.what in ("nothing", "leftover") or (self.what == "product" and self.kind == kind
                                                    and (frames is None or set(frames) == set(self.frames))):
            return None
        if self.what == "directory":
            return f"{self.path} is a directory"
        if self.what == "raw":
            number = f" (frame {self.frame_number})" if self.frame_number is not None else ""
            return f"{self.path} is a raw file of the catalog{number}: obsarch never replaces it; --out writes elsewhere"
        if self.what == "writing":  # replaced now, it would be recorded as that run's product all the same
            return f"{self.path} is being written by run {self.run_id}, which is still running: once it is done, run this again"
        if force:
            return None
        if self.what == "foreign":
            return f"{self.path} exists and is no product of obsarch: --out writes elsewhere, --force replaces it"
        whose = "" if self.kind != kind else f" of other frames (file {', '.join(map(str, sorted(self.frames)))})"
        return f"{self.path} is the {self.kind}{whose} made by run {self.run_id}: --out writes elsewhere, --force replaces it"


def what_is_at(engine_or_conn, path) -> Occupant:
    """What occupies ``path`` (absolute): nothing, a directory, a catalogued
    raw file, the newest product recorded there (its kind, run and the raw
    frames that run read), or a file no run made. Steps ask this before they
    write a product (:meth:`Occupant.refusal` says whether they may)."""
    from sqlalchemy import Connection, select

    from archive.models import Exposure, Product
    from archive.roots import file_id_of

    if not isinstance(engine_or_conn, Connection):
        with transaction(engine_or_conn) as conn:
            return what_is_at(conn, path)
    conn, path = engine_or_conn, str(path)
    made = conn.execute(select(Product.run_id, Product.kind).where(Product.path == path)
                        .order_by(Product.id.desc()).limit(1)).first()
    file_id = file_id_of(conn, path)
    if file_id is not None and conn.execute(select(Product.id).where(Product.file_id == file_id).limit(1)).first() is None:
        number = conn.execute(select(Exposure.frame_number).where(Exposure.file_id == file_id).limit(1)).scalar()
        return Occupant(path, "raw", frame_number=number)
    if os.path.isdir(path):
        return Occupant(path, "directory")
    if not os.path.lexists(path):
        return Occupant(path, "nothing")
    if made is None:
        # a stamped file with no product row yet: a killed run's, or one another run is storing now
        if (writer := _stamped_by_an_unfinished_run(conn, path)) is None:
            return Occupant(path, "foreign")
        return Occupant(path, "writing" if writer[1] == "running" else "leftover", run_id=writer[0])
    frames = conn.execute(select(RunInput.file_id).where(RunInput.run_id == made.run_id, RunInput.role == "frame")).scalars()
    return Occupant(path, "product", made.kind, made.run_id, frozenset(f for f in frames if f is not None))


def output_directory(directory, option: str = "--out") -> Path:
    """``directory`` made if need be, as an absolute path; a path that cannot
    be a directory to write in is refused in one line naming ``option``
    (before any work, not once per product after it)."""
    from archive.exceptions import ObsarchError

    given = Path(directory)
    resolved = given.expanduser().resolve()
    for part in (resolved, *resolved.parents):
        if part.exists():
            if not part.is_dir():
                where = "exists" if part == resolved else f"{part} exists"
                raise ObsarchError(f"{option} {given}: {where} and is not a directory")
            break
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ObsarchError(f"{option} {given}: cannot make the directory: {exc.strerror or exc}") from None
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise ObsarchError(f"{option} {given}: not writable")
    return resolved


def lineage(engine: Engine, file_id: int, depth: int = 0, seen: set | None = None,
            read: tuple[int, str | None] | None = None) -> dict:
    """The tree of what a file was made from: its run, that run's inputs, and
    theirs, down to raw files (files no run made). An input comes with
    ``read``: the id of the run that read it and the content it recorded
    (see :func:`file_content`). Its maker is the run whose product that
    content is, not the last run to write the path (one that ran after its
    reader). Where no run made that content, ``unmade`` says so:
    ``read_by`` (the reader), ``changed_since`` (the file is another content
    now) and ``now_made_by`` (the run whose product it is now, or None)."""
    from sqlalchemy import select

    from archive.models import File, Product, Root, RunInput

    seen = seen if seen is not None else set()
    with transaction(engine) as conn:
        file = conn.execute(
            select((Root.path + "/" + File.relpath).label("path"), File.header_hash, File.size, File.mtime_ns)
            .select_from(File).join(Root, Root.id == File.root_id).where(File.id == file_id)
        ).first()
        made = conn.execute(
            select(Product.run_id, Product.kind, Product.size, Product.mtime_ns, Run.step, Run.finished_at, Run.params_json)
            .join(Run, Run.id == Product.run_id).where(Product.file_id == file_id).order_by(Product.id.desc())
        ).all()
        made_by = _maker(made, None if read is None else read[1])
        inputs = [] if made_by is None else conn.execute(
            select(RunInput.file_id, RunInput.role, RunInput.content).where(RunInput.run_id == made_by.run_id)
            .order_by(RunInput.id)
        ).all()
        links = _linked_files(conn, file_id)
    key = (file_id, None if made_by is None else made_by.run_id)  # one file, two contents: two nodes
    node = {"file_id": file_id, "path": None if file is None else file.path, "run": None, "inputs": [],
            "shown_above": key in seen}
    if made_by is None and made and read is not None:
        now = None if file is None else file_content(file)
        node["unmade"] = {"read_by": read[0], "changed_since": now != read[1],
                          "now_made_by": getattr(_maker(made, now, exact=True), "run_id", None)}
    if (made_by is None and not links) or key in seen:
        return node
    seen.add(key)
    if made_by is not None:
        node["run"] = _run_node(made_by)
        node["inputs"] = [{"role": role, **lineage(engine, input_id, depth + 1, seen, (made_by.run_id, content))}
                          for input_id, role, content in inputs if input_id]
    node["inputs"] += [{"role": role, **lineage(engine, linked, depth + 1, seen)} for role, linked in links]
    return node


def unmade_text(unmade: dict) -> str:
    """What lineage says of an input that no run made as its reader read it
    (``unmade`` of :func:`lineage`; naming the run that wrote the path last
    would name one that ran after its reader)."""
    now_made_by = unmade["now_made_by"]
    now = f"now made by run {now_made_by}" if now_made_by is not None else "no run made it as it is now"
    if unmade["changed_since"]:
        return f"changed since run {unmade['read_by']} used it: {now}"
    return f"no run made it as run {unmade['read_by']} used it"


def _maker(made: list, content: str | None, exact: bool = False):
    """Which of a file's products (newest first) is ``content`` (see
    :func:`file_content`): the one written with its size and time. A content
    not known (the file as it is now, a reader's that recorded none) is the
    newest product's, and so is one that only a product recorded before
    sizes were (revision 0020) can be, unless ``exact``; None when no run
    made it."""
    if content is None:
        return None if exact or not made else made[0]
    size_mtime = content.rsplit(":", 2)[1:]
    found = next((p for p in made if p.size is not None and [str(p.size), str(p.mtime_ns)] == size_mtime), None)
    if found is None and not exact:
        found = next((p for p in made if p.size is None), None)
    return found


def _run_node(made_by) -> dict:
    return {"id": made_by.run_id, "step": made_by.step, "kind": made_by.kind, "finished_at": made_by.finished_at,
            "params": json.loads(made_by.params_json)}


def output_lineage(engine: Engine, path) -> dict | None:
    """The lineage of a product that is no catalogued file (a tool's log, a
    text table: products lists them by path), or None when no run wrote it."""
    from sqlalchemy import select

    from archive.models import Product

    with transaction(engine) as conn:
        made_by = conn.execute(
            select(Product.run_id, Product.kind, Run.step, Run.finished_at, Run.params_json)
            .join(Run, Run.id == Product.run_id).where(Product.path == str(path)).order_by(Product.id.desc()).limit(1)
        ).first()
        inputs = [] if made_by is None else conn.execute(
            select(RunInput.file_id, RunInput.role, RunInput.content).where(RunInput.run_id == made_by.run_id)
            .order_by(RunInput.id)).all()
    if made_by is None:
        return None
    seen: set[tuple[int, int | None]] = set()
    return {"file_id": None, "path": str(path), "run": _run_node(made_by), "shown_above": False,
            "inputs": [{"role": role, **lineage(engine, input_id, 1, seen, (made_by.run_id, content))}
                       for input_id, role, content in inputs if input_id]}


def _linked_files(conn, file_id: int) -> list[tuple[str, int]]:
    """A spectrum's background, response and ARF (BACKFILE, RESPFILE, ANCRFILE)."""
    from processing.xray_catalog import linked_files

    return linked_files(conn, file_id)


def stale_products(engine: Engine) -> list[dict]:
    """Products that something changed since they were made: an input changed,
    went missing or is itself stale or rebuilt, or a frame was graded bad
    after the run where the grade changes what the step makes (a stack and
    a master leave bad frames out, unless made with ``include_bad``).
    A grade given before the run was known to it, and a calibrated frame is
    its frame's calibration whatever the frame's grade: neither is stale,
    since running the step again would make the same product. Each with the
    reason, naming the input by its path (and frame number, for a raw frame)."""
    from sqlalchemy import func, select

    from archive.models import Exposure, File, Product, Root, RunInput
    from archive.query import current_flag

    parent = Run.__table__.alias("parent")
    with transaction(engine) as conn:
        products = conn.execute(
            select(Product.id, Product.run_id, Product.file_id, Product.kind, Product.path, Run.step, Run.params_json, Run.host,
                   func.coalesce(parent.c.started_at, Run.started_at).label("started_at"))
            .join(Run, Run.id == Product.run_id).outerjoin(parent, parent.c.id == Run.parent_id).order_by(Product.id)
        ).all()
        inputs = conn.execute(select(RunInput.run_id, RunInput.file_id, RunInput.role, RunInput.content)).all()
        files = {row.id: row for row in conn.execute(
            select(File.id, File.header_hash, File.size, File.mtime_ns, File.status, (Root.path + "/" + File.relpath).label("path"),
                   Exposure.frame_number, Exposure.id.label("exposure_id"), current_flag("grade", Exposure.id).label("grade"),
                   current_flag("created_at", Exposure.id).label("graded_at"))
            .join(Root, Root.id == File.root_id).outerjoin(Exposure, Exposure.file_id == File.id)
        )}
    made_by = {row.file_id: row for row in products}
    newest = {row.path: row.id for row in products}  # the newest product at each path supersedes older ones
    by_run: dict[int, list] = {}
    for row in inputs:
        by_run.setdefault(row.run_id, []).append(row)
    offsets = _offsets_now(engine, by_run, files)
    memo: dict[int, str | None] = {}
    tools: dict = {}  # each program file's state, and each command's programs, now: looked up once
    here = socket.gethostname()

    def name(item) -> str:
        current = files.get(item.file_id)
        if current is None:
            return f"input {item.role} (file {item.file_id})"
        number = f" (frame {current.frame_number})" if current.frame_number is not None else ""
        return f"input {item.role} {current.path}{number}"

    def reason(product) -> str | None:
        if product.id in memo:
            return memo[product.id]
        memo[product.id] = None
        found = None
        for item in by_run.get(product.run_id, []):
            if item.file_id is None:
                continue  # an offset or another row, not a file
            current = files.get(item.file_id)
            if current is None or current.status == "missing":
                found = f"{name(item)} is missing"
            elif item.content and file_content(current) != item.content:
                found = f"{name(item)} changed"
            elif current.grade == "bad" and _graded_since(current.graded_at, product.started_at) \
                    and (bad := _bad_since(product, item.role, name(item))):
                found = bad
            elif item.file_id in made_by:
                upstream = made_by[item.file_id]
                if newest.get(upstream.path) != upstream.id:
                    found = f"{name(item)} was rebuilt"
                elif (why := reason(upstream)) is not None:
                    found = f"{name(item)} is stale: {why}"
            if found:
                break
        if found is None:
            found = _offset_moved(product, by_run.get(product.run_id, []), files, offsets, name)
        if found is None and product.host == here:  # another host's programs are not looked at here
            found = _tool_changed(product.params_json, tools)
        memo[product.id] = found
        return found

    result = []
    for product in products:
        if newest.get(product.path) != product.id:
            continue  # superseded: its newer version is what matters
        why = reason(product)
        if why:
            if (again := _made_again(product, products, newest, reason, by_run)) is not None:
                why += f"; made again since as {again}"
            result.append({"product_id": product.id, "kind": product.kind, "path": product.path, "run_id": product.run_id,
                           "reason": why, "file_id": product.file_id})
    return result


def _tool_changed(params_json: str | None, now: dict) -> str | None:
    """Why a tool's product is stale: a program file its run recorded
    (``obsarch run``: processing.external.tool_files) was replaced since,
    an upgrade say, or is gone, or its command now runs another (a new
    version first on PATH), as ``obsarch run`` would find. ``now``: what
    was looked up so far."""
    from processing.external import tool_files, tool_state

    if not params_json or '"tools"' not in params_json:
        return None
    params = json.loads(params_json)
    recorded = params.get("tools") or {}
    for path, state in sorted(recorded.items()):
        if path not in now:  # once per stale listing: a --tool directory is walked, a program hashed
            now[path] = tool_state(path)
        current = now[path]
        if current != state:
            what = "is gone" if current == "gone" else ("changed since (a file in it added, removed or resized)"
                                                          if current.startswith("tree:") else "was replaced since (its content changed)")
            return f"the tool {path} {what}"
    command = params.get("template")  # as given, placeholders and all: a placeholder names no fixed program
    if command:
        search = params.get("search_path")
        key = (json.dumps(command), search)
        if key not in now:
            now[key] = tool_files(command, search=search)[0]  # where the run looked
        moved = sorted(set(now[key]) - set(recorded))
        if moved:
            return f"its command now runs {moved[0]}, not what it ran then"
    return None


def _offsets_now(engine: Engine, by_run: dict[int, list], files: dict) -> dict[int, str]:
    """exposure id -> the identity of its current offset, for the frames of
    runs that read offsets (a stack)."""
    exposures = {files[item.file_id].exposure_id for items in by_run.values() if any(i.role == "offset" for i in items)
                 for item in items if item.role == "frame" and item.file_id in files}
    exposures.discard(None)
    if not exposures:  # no stack: the offsets module (and numpy, ~150 ms of a start) is not needed
        return {}
    from processing.offsets import current_offsets

    return {exposure: offset.identity for exposure, offset in current_offsets(engine, sorted(exposures)).items()}


def _offset_moved(product, items: list, files: dict, offsets: dict[int, str], name) -> str | None:
    """Why a product made with offsets is stale: a frame's current offset is
    none of those it was made with (the frame was registered again), so that
    running its step again makes another product."""
    used = {item.content for item in items if item.role == "offset"}
    if not used:
        return None
    for item in items:
        frame = files.get(item.file_id) if item.role == "frame" else None
        if frame is None or frame.exposure_id is None or offsets.get(frame.exposure_id) in used:
            continue
        if frame.exposure_id not in offsets:
            return f"{name(item)} has no current offset any more"
        return f"{name(item)} was registered again since: `obsarch {product.step}` again uses its new offset"
    return None


_WHERE_AND_FROM = ("out", "masters", "master_contents")  # what a master made again from other inputs changes


def _made_again(product, products, newest: dict, reason, by_run: dict) -> str | None:
    """The file name of the newest current product that replaces ``product``:
    made later by the same step, with the same parameters but its output and
    masters (a master made again from other inputs is another file), from
    mostly the same frames (a master of another night is no replacement)."""
    def same(row) -> dict:
        return {k: v for k, v in json.loads(row.params_json or "{}").items() if k not in _WHERE_AND_FROM}

    def frames(row) -> set:
        return {item.file_id for item in by_run.get(row.run_id, []) if item.role == "frame"}

    mine, my_frames = same(product), frames(product)
    for row in reversed(products):
        if row.id <= product.id:
            break
        if (row.step, row.kind) == (product.step, product.kind) and newest.get(row.path) == row.id \
                and row.path != product.path and same(row) == mine and reason(row) is None \
                and 2 * len(frames(row) & my_frames) >= len(my_frames) and os.path.exists(row.path):
            return row.path.rsplit("/", 1)[-1]
    return None


def _graded_since(graded_at, started_at) -> bool:
    """Whether a grade was given after a run began (a grade the run saw is no change)."""
    return graded_at is not None and started_at is not None and graded_at > started_at


def _bad_since(product, role: str, input_name: str) -> str | None:
    """Why an input graded bad after ``product`` was made makes it stale, with
    what to do; None where the grade does not change what the step makes (a
    step made with ``include_bad``; a master's master, which the rules choose
    whatever its grade)."""
    params = json.loads(product.params_json or "{}")
    if params.get("include_bad"):
        return None
    if product.step == "stack":
        return f"{input_name} was graded bad after it was made; `obsarch stack` again leaves it out"
    if product.step.startswith("master-") and role == "frame":
        return f"{input_name} was graded bad after it was made; `obsarch calib {product.step.removeprefix('master-')}` again leaves it out"
    return None


def derived(engine: Engine, file_id: int, seen: set | None = None) -> list[dict]:
    """What was made from a file: the products of every run that read it,
    and what was made from those, down to the last product (lineage down)."""
    from sqlalchemy import select

    from archive.models import Product, RunInput

    seen = seen if seen is not None else {file_id}
    with transaction(engine) as conn:
        rows = conn.execute(
            select(Product.file_id, Product.kind, Product.path, Product.run_id, Run.step, Run.finished_at, RunInput.role)
            .join(RunInput, RunInput.run_id == Product.run_id)
            .join(Run, Run.id == Product.run_id)
            .where(RunInput.file_id == file_id)
            .order_by(Product.id)
        ).all()
    result = []
    for row in rows:
        node = {**row._asdict(), "shown_above": row.file_id in seen, "products": []}
        if row.file_id is not None and row.file_id not in seen:
            seen.add(row.file_id)
            node["products"] = derived(engine, row.file_id, seen)
        result.append(node)
    return result


def list_runs(engine: Engine, limit: int = 100, step: str | None = None) -> list[dict]:
    """The latest processing runs, newest first, with how many inputs and products each has."""
    from sqlalchemy import func, select

    from archive.models import Product, RunInput

    inputs = select(RunInput.run_id, func.count().label("n")).group_by(RunInput.run_id).subquery()
    made = select(Product.run_id, func.count().label("n")).group_by(Product.run_id).subquery()
    statement = (
        select(Run.id, Run.step, Run.state, Run.started_at, Run.finished_at, Run.user, Run.host, Run.item,
               Run.error, Run.params_json, Run.summary_json,
               func.coalesce(inputs.c.n, 0).label("inputs"), func.coalesce(made.c.n, 0).label("products"))
        .outerjoin(inputs, inputs.c.run_id == Run.id)
        .outerjoin(made, made.c.run_id == Run.id)
        .order_by(Run.id.desc())
        .limit(limit)
    )
    if step:
        statement = statement.where(Run.step == step)
    with transaction(engine) as conn:
        return [row._asdict() for row in conn.execute(statement)]


def run_detail(engine: Engine, run_id: int) -> dict:
    """One run: its record (parameters, summary, logs), its inputs and its products."""
    from sqlalchemy import select

    from archive.exceptions import NotFoundError
    from archive.models import File, Product, Root, RunInput

    path = Root.path + "/" + File.relpath
    with transaction(engine) as conn:
        run = conn.execute(select(*Run.__table__.columns).where(Run.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no processing run {run_id}")
        record = run._asdict()
        record["inputs"] = [row._asdict() for row in conn.execute(
            select(RunInput.file_id, RunInput.role, RunInput.content, path.label("path"))
            .outerjoin(File, File.id == RunInput.file_id).outerjoin(Root, Root.id == File.root_id)
            .where(RunInput.run_id == run_id).order_by(RunInput.id)
        )]
        record["products"] = [row._asdict() for row in conn.execute(
            select(Product.id, Product.file_id, Product.kind, Product.path, Product.created_at)
            .where(Product.run_id == run_id).order_by(Product.id)
        )]
    record["params"] = json.loads(record["params_json"] or "{}")
    record["summary"] = json.loads(record["summary_json"] or "null")
    return record
