"""Fetching observations: an archive client, the download queue, ingest.

An archive is searched through its client (:mod:`archive.clients`, one class
per archive); every result becomes an observation in the catalog, downloaded
or not. Its files go through the queue (:mod:`archive.downloads`), archives
among them are unpacked safely (:mod:`archive.unpack`), and what arrived is
ingested and linked to its observation.

Endpoints can be changed in ``obsarch.toml`` under ``[archives]`` (the tests
point them at local servers). Credentials for proprietary data use
astroquery's own mechanisms (``Eso.login``, MAST tokens) and are never
stored in the catalog.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select, update

from archive.clients import (
    CLIENTS,
    FETCH_NAMES,
    ArchiveClient,
    Endpoints,
    Request,
    client,
    reaching,
)
from archive.db import transaction
from archive.downloads import (  # noqa: F401  (the queue's API, as before the split)
    QueueSummary,
    download_file,
    downloads_table,
    enqueue,
    observation_ids,
    pending_locates,
    record_observations,
    record_unreachable,
    retry_failed,
    run_queue,
    save_search,
    settle_locate,
)
from archive.exceptions import FetchError
from archive.ingest import ingest
from archive.models import Exposure, Observation, Search
from archive.roots import files_below
from archive.unpack import safe_extract  # noqa: F401

__all__ = ["FetchError", "FetchSummary", "fetch", "fetch_queue", "search", "sync"]


@dataclass
class FetchSummary:
    observations: int = 0
    new_observations: int = 0
    queued: int = 0
    queue: QueueSummary = field(default_factory=QueueSummary)
    linked: int = 0


def search(engine: Engine, archive: str, mission: str, target: str, *, radius_arcmin: float = 10.0,
           night: str | None = None, config: dict | None = None) -> tuple[list[dict], int]:
    """Search an archive and record every result as a known observation; the
    search is kept for ``sync``. Returns the rows and how many were new."""
    archive_client = client(archive, Endpoints.from_config(config))
    with reaching(archive_client.name):
        rows = archive_client.search(Request(mission.lower(), target=target, radius_arcmin=radius_arcmin, night=night))
    new, _ = record_observations(engine, rows)
    save_search(engine, archive_client.name, mission.lower(), target, {"radius_arcmin": radius_arcmin, "night": night})
    return rows, new


def fetch(engine: Engine, name: str, obsids: list[str] | None = None, *, instrument: str | None = None,
          target: str | None = None, night: str | None = None, with_calib: bool = False,
          dest: Path = Path("archive-data"), config: dict | None = None, **queue_options) -> FetchSummary:
    """Queue, download, unpack and ingest observations. ``name`` is an
    archive (eso: ``instrument`` and a target or night; mast: ``instrument``
    is the collection and ``obsids`` its obs_ids) or a HEASARC mission
    (``obsids``)."""
    try:
        archive_client = FETCH_NAMES[name.lower()](Endpoints.from_config(config))
    except KeyError:
        raise FetchError(f"unknown mission or archive {name!r}; use one of {', '.join(FETCH_NAMES)}") from None
    key = (instrument or "" if name.lower() in CLIENTS else name).lower()
    request = Request(key, obsids=list(obsids or []), target=target, night=night, with_calib=with_calib)
    archive_client.check(request)
    mission = archive_client.mission(key)
    with transaction(engine) as conn:
        known = dict(conn.execute(select(Observation.obsid, Observation.row_json).where(Observation.mission == mission)).all())
    try:
        with reaching(archive_client.name):
            rows = archive_client.wanted(request, known)
    except FetchError as exc:
        if exc.__cause__ is not None:  # the archive was not reached: the queue keeps the request and why
            what, values = ("obsid", request.obsids) if request.obsids else ("target", [request.target or ""])
            record_unreachable(engine, archive_client.name, key, what, values, dest, str(exc))
        raise
    new, _ = record_observations(engine, [r for r in rows if not r.get("_known")])
    if archive_client.fetch_is_search and target:
        save_search(engine, archive_client.name, key, target, {"night": night, "with_calib": with_calib})
    places, queued = _queue(engine, archive_client, key, rows, dest)
    summary = FetchSummary(observations=len(places), new_observations=new, queued=queued)
    summary.queue = run_queue(engine, observation_ids=[i for i, _ in places.values()], **queue_options)
    summary.linked = ingest_observations(engine, places, config)
    return summary


def _queue(engine: Engine, archive_client: ArchiveClient, key: str, rows: list[dict], dest: Path) -> tuple[dict, int]:
    """Queue the files of ``rows``; (obsid -> (observation id, directory), files queued)."""
    mission = archive_client.mission(key)
    ids = observation_ids(engine, mission, [r["obsid"] for r in rows])
    places, queued = {}, 0
    with reaching(archive_client.name):
        remote = archive_client.files(key, rows)
    for obsid, files in remote.items():
        directory = (dest / mission / obsid).resolve()
        queued += enqueue(engine, ids[obsid], [(f.url, directory / f.relpath) for f in files],
                          sizes={f.url: f.size for f in files if f.size})
        places[obsid] = (ids[obsid], directory)
    return places, queued


def fetch_heasarc(engine: Engine, mission: str, obsids: list[str], **options) -> FetchSummary:
    """Queue, download, unpack and ingest the data of HEASARC observations."""
    return fetch(engine, "heasarc", obsids, instrument=mission, **options)


def fetch_eso(engine: Engine, instrument: str, **options) -> FetchSummary:
    """Search ESO for raw frames (and their calibrations), then queue, download and ingest them."""
    return fetch(engine, "eso", instrument=instrument, **options)


def fetch_mast(engine: Engine, collection: str, obs_ids: list[str], **options) -> FetchSummary:
    """Queue, download and ingest the science products of MAST observations."""
    return fetch(engine, "mast", obs_ids, instrument=collection, **options)


def fetch_queue(engine: Engine, *, config: dict | None = None, **queue_options) -> FetchSummary:
    """Run whatever is queued (after ``sync`` or ``--retry-failed``), then ingest it."""
    from archive.models import Download

    with transaction(engine) as conn:
        pending = conn.execute(select(Download.observation_id, Download.local_path).where(
            Download.state.in_(("queued", "downloading")))).all()
    summary = FetchSummary(queued=len(pending))
    summary.queue = QueueSummary()
    for download_id, archive, key, what, value, dest in pending_locates(engine):  # observations not reached before
        options = {"obsids": [value]} if what == "obsid" else {"target": value or None}
        try:
            located = fetch(engine, archive, instrument=key, dest=dest, config=config, **options, **queue_options)
        except FetchError as exc:
            settle_locate(engine, download_id, str(exc))
            summary.queue.failed.append((f"{archive} {key} {value}", str(exc)))
            continue
        settle_locate(engine, download_id, None)
        summary.queue.done += located.queue.done
        summary.queue.bytes += located.queue.bytes
        summary.queue.failed += located.queue.failed
        summary.linked += located.linked
    rest = run_queue(engine, **queue_options)
    summary.queue.done += rest.done
    summary.queue.bytes += rest.bytes
    summary.queue.unpacked += rest.unpacked
    summary.queue.failed += rest.failed
    places = {}
    for observation_id, local_path in pending:
        if observation_id is not None:
            with transaction(engine) as conn:
                obs = conn.execute(select(Observation.mission, Observation.obsid).where(Observation.id == observation_id)).one()
            directory = Path(local_path)
            while directory.name != obs.obsid and directory != directory.parent:
                directory = directory.parent
            places[obs.obsid] = (observation_id, directory if directory.name == obs.obsid else Path(local_path).parent)
    summary.observations = len(places)
    summary.linked += ingest_observations(engine, places, config)
    return summary


def sync(engine: Engine, *, dest: Path = Path("archive-data"), config: dict | None = None) -> list[tuple[str, str, int]]:
    """Ask the archives again for every saved search; record new observations
    and queue their data. Returns (archive, target, new observations)."""
    endpoints = Endpoints.from_config(config)
    with transaction(engine) as conn:
        searches = conn.execute(select(Search.archive, Search.mission, Search.target, Search.params_json)).all()
    result = []
    for archive, key, target, params_json in searches:
        params = json.loads(params_json)
        archive_client = client(archive, endpoints)
        with transaction(engine) as conn:
            known = set(conn.execute(select(Observation.obsid).where(Observation.mission == archive_client.mission(key))).scalars())
        with reaching(archive):
            rows = archive_client.search(Request(key, target=target, radius_arcmin=params.get("radius_arcmin") or 10.0,
                                                 night=params.get("night"), with_calib=params.get("with_calib", False)))
        fresh = [r for r in rows if r["obsid"] not in known]
        record_observations(engine, rows)
        save_search(engine, archive, key, target, params)
        if fresh:
            _queue(engine, archive_client, key, fresh, dest)
        result.append((archive, target, len(fresh)))
    return result


# -- after the downloads ---------------------------------------------------------------------


def _uncompress(path: Path) -> Path:
    """ESO delivers some files compressed with Unix compress (.Z): gunzip reads them."""
    if not path.name.endswith(".Z") or not shutil.which("gunzip"):
        return path
    subprocess.run(["gunzip", "-f", str(path)], check=True)
    return path.with_name(path.name[:-2])


def ingest_observations(engine: Engine, observations: dict[str, tuple[int, Path]], config: dict | None = None) -> int:
    """Ingest each observation's directory and link its exposures to it."""
    linked = 0
    for observation_id, directory in observations.values():
        if not directory.exists():
            continue
        for path in list(directory.rglob("*.Z")):
            _uncompress(path)
        ingest(engine, [directory], config=config)
        with transaction(engine, write=True) as conn:
            ids = files_below(conn, directory.resolve())
            if ids:
                linked += conn.execute(update(Exposure).where(Exposure.file_id.in_(ids)).values(observation_id=observation_id)).rowcount
    return linked
