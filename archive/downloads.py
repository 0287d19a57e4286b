"""The download queue: observations and files to fetch, kept in the catalog.

Each file goes to a temporary name (``.part``), resumes where it stopped, is
verified (size; checksum when the archive gives one) and renamed; failures
retry with backoff and are recorded while the rest go on. Tar archives are
unpacked by :mod:`archive.unpack`. States are written in the main thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select, update

from archive.clients import http_session
from archive.db import insert_ignoring_conflicts, transaction, utcnow
from archive.exceptions import FetchError, ObsarchError
from archive.models import Download, Observation, Search
from archive.unpack import is_archive, safe_extract

CHUNK = 1 << 16


# -- observations and the queue in the catalog ------------------------------------------


def record_observations(engine: Engine, rows: list[dict]) -> tuple[int, int]:
    """Insert observations not known yet, refresh those known; (new, known)."""
    if not rows:
        return 0, 0
    now = utcnow()
    new = 0
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]  # a client's own notes
    with transaction(engine, write=True) as conn:
        for row in rows:
            existing = conn.execute(select(Observation.id).where(Observation.mission == row["mission"], Observation.obsid == row["obsid"])).scalar()
            if existing is None:
                stmt = insert_ignoring_conflicts(conn, Observation.__table__, ["mission", "obsid"]).returning(Observation.id)
                new += len(conn.execute(stmt, [{**row, "first_seen": now}]).all())
            else:
                conn.execute(update(Observation).where(Observation.id == existing).values(**row))
    return new, len(rows) - new


def save_search(engine: Engine, archive: str, mission: str, target: str, params: dict) -> None:
    now = utcnow()
    with transaction(engine, write=True) as conn:
        conn.execute(insert_ignoring_conflicts(conn, Search.__table__, ["archive", "mission", "target"]),
                     [{"archive": archive, "mission": mission, "target": target, "params_json": json.dumps(params),
                       "created_at": now}])
        conn.execute(update(Search).where(Search.archive == archive, Search.mission == mission, Search.target == target)
                     .values(last_run_at=now, params_json=json.dumps(params)))


def observation_ids(engine: Engine, mission: str, obsids: list[str]) -> dict[str, int]:
    with transaction(engine) as conn:
        return dict(conn.execute(select(Observation.obsid, Observation.id).where(Observation.mission == mission,
                                                                                  Observation.obsid.in_(obsids))).all())


def enqueue(engine: Engine, observation_id: int | None, files: list[tuple[str, Path]], *, checksums: dict | None = None,
            sizes: dict | None = None) -> int:
    """Queue (url, local path) pairs; pairs already queued or done are left as they are."""
    now = utcnow()
    rows = [{"observation_id": observation_id, "url": url, "local_path": str(path), "state": "queued", "attempts": 0,
             "checksum": (checksums or {}).get(url), "size_expected": (sizes or {}).get(url), "created_at": now,
             "updated_at": now} for url, path in files]
    if not rows:
        return 0
    with transaction(engine, write=True) as conn:
        stmt = insert_ignoring_conflicts(conn, Download.__table__, ["url", "local_path"]).returning(Download.id)
        return len(conn.execute(stmt, rows).all())


# -- downloading ---------------------------------------------------------------------------


@dataclass
class Outcome:
    download_id: int
    ok: bool
    bytes: int
    attempts: int
    error: str | None = None


def _verify(path: Path, expected_size: int | None, checksum: str | None) -> str | None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"truncated transfer: got {size} of {expected_size} bytes"
    if checksum:
        algorithm, _, expected = checksum.partition(":")
        digest = hashlib.new(algorithm)
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected.lower():
            return f"checksum mismatch: {algorithm} {digest.hexdigest()}, the archive says {expected}"
    return None


def download_file(session, url: str, target: Path, *, size: int | None = None, checksum: str | None = None,
                  timeout: float = 60.0, on_bytes: Callable[[int], None] | None = None) -> int:
    """Download ``url`` to ``target`` through ``target.part``, resuming a
    partial file; verify; rename. Returns the bytes received now."""
    import requests

    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    received = 0
    try:
        with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code == 416 and have:  # nothing left to fetch
                total = have
            else:
                if response.status_code >= 400:
                    raise FetchError(f"HTTP {response.status_code} {response.reason or ''} from {url}".strip())
                if response.status_code != 206:  # the server restarts from the beginning
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                # Keep what arrives even if the connection breaks early; the
                # size check below says so, and the next try resumes from it.
                response.raw.enforce_content_length = False
                with open(part, "ab" if have else "wb") as stream:
                    for chunk in response.iter_content(CHUNK):
                        stream.write(chunk)
                        received += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
    except requests.exceptions.Timeout as exc:
        raise FetchError(f"timed out after {timeout:g} s: {url}") from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        got = part.stat().st_size if part.exists() else 0
        raise FetchError(f"truncated transfer: connection broken after {got} bytes of {url} (kept to resume)") from exc
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"cannot download {url}: {exc}") from exc
    problem = _verify(part, size or total, checksum)
    if problem:
        if "checksum" in problem:
            part.unlink()  # corrupt: start again next time
        raise FetchError(problem)
    os.replace(part, target)
    return received


def _attempt(job: dict, *, retries: int, backoff: float, timeout: float, on_bytes) -> Outcome:
    session = http_session()
    attempts, error, got = 0, None, 0
    for attempt in range(retries):
        attempts += 1
        try:
            got += download_file(session, job["url"], Path(job["local_path"]), size=job["size_expected"],
                                 checksum=job["checksum"], timeout=timeout, on_bytes=on_bytes)
            return Outcome(job["id"], True, got, attempts)
        except FetchError as exc:
            error = str(exc)
            if attempt + 1 < retries:
                time.sleep(backoff * 2**attempt)
    return Outcome(job["id"], False, got, attempts, error)


@dataclass
class QueueSummary:
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    unpacked: int = 0


def run_queue(
    engine: Engine, *, parallel: int = 4, retries: int = 3, backoff: float = 1.0, timeout: float = 60.0,
    observation_ids: list[int] | None = None, on_bytes: Callable[[int], None] | None = None,
) -> QueueSummary:
    """Download every queued file (and any left 'downloading' by an
    interrupted run), ``parallel`` at a time. States are written here, in the
    main thread."""
    statement = (select(Download).where(Download.state.in_(("queued", "downloading")), ~Download.url.startswith(LOCATE))
                 .order_by(Download.id))
    if observation_ids is not None:
        statement = statement.where(Download.observation_id.in_(observation_ids))
    with transaction(engine) as conn:
        jobs = [dict(row._mapping) for row in conn.execute(statement.with_only_columns(
            Download.id, Download.url, Download.local_path, Download.size_expected, Download.checksum, Download.attempts))]
    summary = QueueSummary()
    if not jobs:
        return summary
    with transaction(engine, write=True) as conn:
        conn.execute(update(Download).where(Download.id.in_([j["id"] for j in jobs])).values(state="downloading", updated_at=utcnow()))
    lock = threading.Lock()

    def count(n):
        with lock:
            if on_bytes:
                on_bytes(n)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(_attempt, job, retries=retries, backoff=backoff, timeout=timeout, on_bytes=count): job for job in jobs}
        for future in as_completed(futures):
            job, outcome = futures[future], future.result()
            state, error = ("done", None) if outcome.ok else ("failed", outcome.error)
            if outcome.ok and is_archive(job["local_path"]):
                try:
                    summary.unpacked += safe_extract(Path(job["local_path"]), Path(job["local_path"]).parent)
                    Path(job["local_path"]).unlink()
                except ObsarchError as exc:  # refused by the unpacker: recorded, the others go on
                    state, error = "failed", str(exc)
            with transaction(engine, write=True) as conn:
                conn.execute(update(Download).where(Download.id == job["id"]).values(
                    state=state, attempts=job["attempts"] + outcome.attempts, last_error=error, updated_at=utcnow(),
                    bytes=Path(job["local_path"]).stat().st_size if state == "done" and Path(job["local_path"]).exists() else outcome.bytes,
                    finished_at=utcnow() if state == "done" else None))
            if state == "done":
                summary.done += 1
                summary.bytes += outcome.bytes
            else:
                summary.failed.append((job["url"], error))
    return summary


LOCATE = "locate:"  # a queue entry for what could not even be listed: "locate:ARCHIVE/KEY/obsid|target/VALUE"


def record_unreachable(engine: Engine, archive: str, key: str, what: str, values: list[str], dest: Path, error: str) -> None:
    """Record in the queue that the archive could not be asked for these
    observations (``what``: obsid or target), so that `obsarch downloads`
    shows why and `obsarch fetch --retry-failed` asks again."""
    now = utcnow()
    urls = [f"{LOCATE}{archive}/{key}/{what}/{value}" for value in values]
    rows = [{"observation_id": None, "url": url, "local_path": str(dest), "state": "failed", "attempts": 1, "last_error": error,
             "created_at": now, "updated_at": now} for url in urls]
    with transaction(engine, write=True) as conn:
        conn.execute(insert_ignoring_conflicts(conn, Download.__table__, ["url", "local_path"]), rows)
        conn.execute(update(Download).where(Download.url.in_(urls), Download.local_path == str(dest))
                     .values(state="failed", last_error=error, updated_at=now, attempts=Download.attempts + 1))


def pending_locates(engine: Engine) -> list[tuple[int, str, str, str, str, Path]]:
    """Queued entries of :func:`record_unreachable`: (id, archive, key, what, value, dest)."""
    with transaction(engine) as conn:
        rows = conn.execute(select(Download.id, Download.url, Download.local_path).where(
            Download.state == "queued", Download.url.startswith(LOCATE))).all()
    result = []
    for download_id, url, dest in rows:
        archive, key, what, value = url[len(LOCATE):].split("/", 3)
        result.append((download_id, archive, key, what, value, Path(dest)))
    return result


def settle_locate(engine: Engine, download_id: int, error: str | None) -> None:
    """A located entry is done (its files are queued under their own rows), or failed again."""
    with transaction(engine, write=True) as conn:
        conn.execute(update(Download).where(Download.id == download_id).values(
            state="failed" if error else "done", last_error=error, updated_at=utcnow(),
            attempts=Download.attempts + 1, finished_at=None if error else utcnow()))


def retry_failed(engine: Engine) -> int:
    with transaction(engine, write=True) as conn:
        return conn.execute(update(Download).where(Download.state == "failed").values(state="queued", updated_at=utcnow())).rowcount


def downloads_table(engine: Engine) -> list[dict]:
    """Per observation: its state (known, queued, downloading, done, failed), files and bytes, and the last error."""
    with transaction(engine) as conn:
        observations = conn.execute(select(Observation.id, Observation.mission, Observation.obsid, Observation.target,
                                           Observation.t_start).order_by(Observation.mission, Observation.obsid)).all()
        counts = conn.execute(
            select(Download.observation_id, Download.state, func.count(), func.coalesce(func.sum(Download.bytes), 0),
                   func.max(Download.last_error))
            .group_by(Download.observation_id, Download.state)
        ).all()
    per: dict[int, dict] = {}
    for observation_id, state, n, size, error in counts:
        entry = per.setdefault(observation_id, {"states": {}, "bytes": 0, "error": None})
        entry["states"][state] = n
        entry["bytes"] += int(size or 0)
        entry["error"] = entry["error"] or error
    rows = []
    for obs in observations:
        entry = per.get(obs.id)
        if entry is None:
            state, files = "known", 0
        else:
            states = entry["states"]
            files = sum(states.values())
            state = next(s for s in ("downloading", "failed", "queued", "done") if s in states or s == "done")
        rows.append({"mission": obs.mission, "obsid": obs.obsid, "target": obs.target, "start": obs.t_start, "state": state,
                     "files": files, "done": (entry or {}).get("states", {}).get("done", 0),
                     "bytes": (entry or {}).get("bytes", 0), "last_error": (entry or {}).get("error")})
    with transaction(engine) as conn:
        unreached = conn.execute(select(Download.url, Download.state, Download.last_error).where(
            Download.url.startswith(LOCATE), Download.state != "done").order_by(Download.id)).all()
    for url, state, error in unreached:  # asked for, but the archive was never reached
        archive, key, what, value = url[len(LOCATE):].split("/", 3)
        rows.append({"mission": key, "obsid": value if what == "obsid" else None, "target": value if what == "target" else None,
                     "start": None, "state": state, "files": 0, "done": 0, "bytes": 0, "last_error": error})
    return rows
