"""Archives: searching with astroquery, a download queue in the catalog.

Searches go through astroquery (HEASARC's TAP service for XMM-Newton,
NuSTAR and Chandra; ESO's archive for MUSE and other instruments, with
CalSelector for their calibrations). Every result becomes an observation in
the catalog, downloaded or not. Files are fetched by a queue that lives in
the catalog: each goes to a temporary name, resumes where it stopped, is
verified (size; checksum when the archive gives one) and renamed; failures
retry with backoff and are recorded while the rest go on. Tar archives are
unpacked only when no member would land outside the target directory.
Downloaded files are ingested and linked to their observation.

Endpoints can be changed in ``obsarch.toml`` under ``[archives]`` (the tests
point them at local servers). Credentials for proprietary data use
astroquery's own mechanisms (``Eso.login``, MAST tokens) and are never
stored in the catalog.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

from sqlalchemy import Engine, func, select, update

from archive.db import insert_ignoring_conflicts, transaction
from archive.exceptions import ObsarchError
from archive.ingest import ingest, utcnow
from archive.keywords import MJD_EPOCH
from archive.models import Download, Exposure, Observation, Search
from archive.roots import files_below

HEASARC_TABLES = {"xmm": "xmmmaster", "nustar": "numaster", "chandra": "chanmaster"}
_EXPOSURE_COLUMNS = ("exposure", "duration", "exposure_a", "ontime", "exptime")
CHUNK = 1 << 16


class FetchError(ObsarchError):
    pass


@dataclass
class Endpoints:
    heasarc_vo: str | None = None
    eso_query: str | None = None
    eso_calselector: str | None = None
    eso_download: str | None = None
    mast: str | None = None
    sesame: str | None = None

    @classmethod
    def from_config(cls, config: dict | None) -> Endpoints:
        section = (config or {}).get("archives", {})
        values = {name: section.get(name) or os.environ.get(f"OBSARCH_{name.upper()}_URL") for name in cls.__dataclass_fields__}
        return cls(**values)


# -- clients ---------------------------------------------------------------------------


def _position(target: str, endpoints: Endpoints):
    """A target name (resolved by Sesame) or coordinates ('10 20 30 -40 50 60', '155.5 -40.8')."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord, name_resolve

    try:
        return SkyCoord(target, unit=(u.hourangle, u.deg)) if ":" in target or len(target.split()) == 6 else SkyCoord(
            *[float(x) for x in target.replace(",", " ").split()], unit="deg")
    except ValueError:
        pass
    if endpoints.sesame:
        name_resolve.sesame_url.set([endpoints.sesame])
    try:
        # Not from astropy's download cache: it is keyed by URL, so a cached
        # answer could come from another Sesame endpoint that had that URL.
        return SkyCoord.from_name(target, cache=False)
    except name_resolve.NameResolveError as exc:
        raise FetchError(f"cannot resolve the target {target!r}: {exc}") from exc


def _heasarc(endpoints: Endpoints):
    from astroquery.heasarc import Heasarc, HeasarcClass

    client = HeasarcClass() if endpoints.heasarc_vo else Heasarc
    if endpoints.heasarc_vo:
        client.VO_URL = endpoints.heasarc_vo
    return client


def _mjd(value) -> datetime | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return MJD_EPOCH + timedelta(days=number)


def _plain(row) -> dict:
    result = {}
    for name in row.colnames:
        value = row[name]
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        result[name] = None if hasattr(value, "mask") else value
    return result


def heasarc_search(mission: str, target: str, radius_arcmin: float, endpoints: Endpoints) -> list[dict]:
    """Observations of ``mission`` around ``target`` from HEASARC's master table."""
    from astropy import units as u

    table_name = _heasarc_table(mission)
    position = _position(target, endpoints)
    table = _heasarc(endpoints).query_region(position, catalog=table_name, radius=radius_arcmin * u.arcmin, columns="*")
    return [_heasarc_row(mission, _plain(row)) for row in table]


def _heasarc_table(mission: str) -> str:
    try:
        return HEASARC_TABLES[mission.lower()]
    except KeyError as exc:
        raise FetchError(f"unknown HEASARC mission {mission!r}; use one of {', '.join(HEASARC_TABLES)}") from exc


def _heasarc_row(mission: str, row: dict) -> dict:
    exposure = next((row[c] for c in _EXPOSURE_COLUMNS if row.get(c) is not None), None)
    return {
        "archive": "heasarc", "mission": mission.lower(), "obsid": str(row.get("obsid")).strip(),
        "target": (row.get("name") or "").strip() or None, "ra": row.get("ra"), "dec": row.get("dec"),
        "t_start": _mjd(row.get("time")), "t_end": _mjd(row.get("end_time")), "public_date": _mjd(row.get("public_date")),
        "exptime": float(exposure) if exposure is not None else None, "instrument": None, "row_json": json.dumps(row, default=str),
    }


def heasarc_locate(mission: str, obsids: list[str], endpoints: Endpoints) -> tuple[list[dict], dict[str, str]]:
    """The observations and, per obsid, the URL of its data directory (HEASARC datalink)."""
    table_name = _heasarc_table(mission)
    client = _heasarc(endpoints)
    quoted = ", ".join("'" + o.replace("'", "") + "'" for o in obsids)
    table = client.query_tap(f"SELECT * FROM {table_name} WHERE obsid IN ({quoted})").to_table()
    found = {str(row["obsid"]).strip() for row in table}
    missing = [o for o in obsids if o not in found]
    if missing:
        raise FetchError(f"{mission} has no observation {', '.join(missing)} in {table_name}")
    links = client.locate_data(table, catalog_name=table_name)
    urls = {}
    for row, link in zip(table, links):
        error = str(link["error_message"] or "").strip()
        if error:
            raise FetchError(f"{mission} {row['obsid']}: the archive says: {error}")
        urls[str(row["obsid"]).strip()] = str(link["access_url"])
    return [_heasarc_row(mission, _plain(row)) for row in table], urls


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def list_directory(url: str, session, depth: int = 6) -> list[tuple[str, str]]:
    """(file URL, path relative to ``url``) of every file below a directory
    listing, not leaving it (parent links, other hosts and queries are skipped)."""
    found, todo, seen = [], [(url, 0)], set()
    base = url if url.endswith("/") else url + "/"
    while todo:
        current, level = todo.pop()
        if current in seen or level > depth:
            continue
        seen.add(current)
        response = session.get(current, timeout=60)
        if response.status_code >= 400:
            raise FetchError(f"HTTP {response.status_code} listing {current}")
        parser = _Links()
        parser.feed(response.text)
        for href in parser.hrefs:
            target = urljoin(current, href)
            if "?" in href or "#" in href or not target.startswith(base) or target == current:
                continue
            if target.endswith("/"):
                todo.append((target, level + 1))
            else:
                found.append((target, target[len(base):]))
    return sorted(set(found))


def eso_search(instrument: str, target: str | None, night: str | None, endpoints: Endpoints, with_calib: bool = False,
               extra: dict | None = None) -> list[dict]:
    """Raw frames of an ESO instrument (and, with ``with_calib``, their raw
    calibrations from CalSelector)."""
    from astroquery.eso import EsoClass

    client = EsoClass()
    if endpoints.eso_query:
        client.QUERY_INSTRUMENT_URL = endpoints.eso_query
    if endpoints.eso_calselector:
        client.CALSELECTOR_URL = endpoints.eso_calselector
    filters = dict(extra or {})
    if target:
        filters["target"] = target
    if night:
        filters["night"] = night
    table = client.query_instrument(instrument.lower(), column_filters=filters, cache=False)
    if table is None:
        return []
    rows = [_eso_row(instrument, _plain(row), "science") for row in table]
    if with_calib and rows:
        for dp_id in sorted(client.get_associated_files([r["obsid"] for r in rows], mode="raw")):
            rows.append({"archive": "eso", "mission": f"eso-{instrument.lower()}", "obsid": dp_id, "target": "calibration",
                         "ra": None, "dec": None, "t_start": _eso_time(dp_id), "t_end": None, "public_date": None,
                         "exptime": None, "instrument": instrument.upper(), "row_json": json.dumps({"DP.ID": dp_id, "role": "calibration"})})
    return rows


def _eso_time(dp_id: str) -> datetime | None:
    match = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)", dp_id)
    return datetime.fromisoformat(match[1]) if match else None


def _eso_row(instrument: str, row: dict, role: str) -> dict:
    def pick(*names):
        return next((row[n] for n in names if row.get(n) not in (None, "")), None)

    dp_id = str(pick("DP.ID", "dp_id")).strip()
    mjd = pick("MJD-OBS", "mjd_obs")
    release = pick("Release Date", "release_date")
    return {
        "archive": "eso", "mission": f"eso-{instrument.lower()}", "obsid": dp_id,
        "target": pick("OBS.TARG.NAME", "Object", "object"), "ra": _float(pick("RA", "ra")), "dec": _float(pick("DEC", "dec")),
        "t_start": _mjd(mjd) or _eso_time(dp_id), "t_end": None,
        "public_date": datetime.fromisoformat(str(release)[:19]) if release else None,
        "exptime": _float(pick("EXPTIME", "Exptime", "exptime")), "instrument": instrument.upper(),
        "row_json": json.dumps({**row, "role": role}, default=str),
    }


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def eso_url(dp_id: str, endpoints: Endpoints) -> str:
    from astroquery.eso import EsoClass

    return (endpoints.eso_download or EsoClass.DOWNLOAD_URL) + dp_id


def _mast(endpoints: Endpoints):
    from astroquery.mast import Observations, ObservationsClass

    if not endpoints.mast:
        return Observations
    client = ObservationsClass()
    api = client._portal_api_connection
    api.MAST_REQUEST_URL = endpoints.mast + "/api/v0/invoke"
    api.COLUMNS_CONFIG_URL = endpoints.mast + "/portal/Mashup/Mashup.asmx/columnsconfig"
    api.MAST_DOWNLOAD_URL = endpoints.mast + "/api/v0.1/Download/file"
    return client


def mast_search(collection: str, target: str, radius_arcmin: float, endpoints: Endpoints) -> list[dict]:
    """Observations of a MAST collection (HST, JWST, TESS...) around a target."""
    from astropy import units as u

    position = _position(target, endpoints)
    table = _mast(endpoints).query_region(position, radius=radius_arcmin * u.arcmin)
    rows = []
    for row in table:
        row = _plain(row)
        if str(row.get("obs_collection", "")).upper() != collection.upper():
            continue
        rows.append({
            "archive": "mast", "mission": f"mast-{collection.lower()}", "obsid": str(row.get("obs_id")),
            "target": row.get("target_name"), "ra": _float(row.get("s_ra")), "dec": _float(row.get("s_dec")),
            "t_start": _mjd(row.get("t_min")), "t_end": _mjd(row.get("t_max")), "public_date": _mjd(row.get("t_obs_release")),
            "exptime": _float(row.get("t_exptime")), "instrument": row.get("instrument_name"), "row_json": json.dumps(row, default=str),
        })
    return rows


def mast_products(engine: Engine, collection: str, obs_ids: list[str], endpoints: Endpoints) -> dict[str, list[dict]]:
    """Science products (FITS) of observations found before by a MAST search."""
    mission = f"mast-{collection.lower()}"
    with transaction(engine) as conn:
        known = dict(conn.execute(select(Observation.obsid, Observation.row_json).where(
            Observation.mission == mission, Observation.obsid.in_(obs_ids))).all())
    missing = [o for o in obs_ids if o not in known]
    if missing:
        raise FetchError(f"{', '.join(missing)}: not a known {collection} observation; run `obsarch archive search mast "
                         f"--mission {collection.lower()} --target ...` first")
    groups = {str(json.loads(known[o])["obsid"]): o for o in obs_ids}
    client = _mast(endpoints)
    products = client.get_product_list(list(groups))
    result: dict[str, list[dict]] = {o: [] for o in obs_ids}
    for row in products:
        row = _plain(row)
        name = str(row.get("productFilename") or "")
        if row.get("productType") != "SCIENCE" or not name.lower().endswith((".fits", ".fits.gz", ".fit")):
            continue
        obs_id = groups.get(str(row.get("obsID") or row.get("parent_obsid")))
        if obs_id:
            url = f"{client._portal_api_connection.MAST_DOWNLOAD_URL}?uri={row['dataURI']}"
            result[obs_id].append({"url": url, "name": name, "size": row.get("size")})
    return result


# -- the catalog side --------------------------------------------------------------------


def record_observations(engine: Engine, rows: list[dict]) -> tuple[int, int]:
    """Insert observations not known yet, refresh those known; (new, known)."""
    if not rows:
        return 0, 0
    now = utcnow()
    new = 0
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


def enqueue(engine: Engine, observation_id: int | None, files: list[tuple[str, Path]], *, checksums: dict | None = None) -> int:
    """Queue (url, local path) pairs; pairs already queued or done are left as they are."""
    now = utcnow()
    rows = [{"observation_id": observation_id, "url": url, "local_path": str(path), "state": "queued", "attempts": 0,
             "checksum": (checksums or {}).get(url), "created_at": now, "updated_at": now} for url, path in files]
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


def _session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "obsarch (astroquery)"
    return session


def _attempt(job: dict, *, retries: int, backoff: float, timeout: float, on_bytes) -> Outcome:
    session = _session()
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
    statement = select(Download).where(Download.state.in_(("queued", "downloading"))).order_by(Download.id)
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
            if outcome.ok and _is_archive(job["local_path"]):
                try:
                    summary.unpacked += safe_extract(Path(job["local_path"]), Path(job["local_path"]).parent)
                    Path(job["local_path"]).unlink()
                except FetchError as exc:
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


def retry_failed(engine: Engine) -> int:
    with transaction(engine, write=True) as conn:
        return conn.execute(update(Download).where(Download.state == "failed").values(state="queued", updated_at=utcnow())).rowcount


# -- unpacking ----------------------------------------------------------------------------------


def _is_archive(path: str) -> bool:
    return path.lower().endswith((".tar", ".tar.gz", ".tgz"))


def safe_extract(archive_path: Path, target: Path) -> int:
    """Extract a tar (plain or gzip) into ``target``, refusing the whole
    archive, before anything is written, if any member would land outside
    it: '..', absolute paths, links that point out, devices."""
    target = target.resolve()
    try:
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, target, archive_path)
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as exc:
        raise FetchError(f"{archive_path.name}: not a readable tar archive: {exc}") from exc
    return len(members)


def _check_member(member: tarfile.TarInfo, target: Path, archive_path: Path) -> None:
    def refuse(why):
        raise FetchError(f"{archive_path.name} refused, nothing extracted: member {member.name!r} {why}")

    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.name):
        refuse("has an absolute path")
    destination = (target / member.name).resolve()
    if target != destination and target not in destination.parents:
        refuse(f"would land outside {target}")
    if member.issym() or member.islnk():
        link = member.linkname
        pointed = (destination.parent / link).resolve() if member.issym() else (target / link).resolve()
        if PurePosixPath(link).is_absolute() or (target != pointed and target not in pointed.parents):
            refuse(f"links to {link!r}, outside {target}")
    if member.isdev() or member.isfifo():
        refuse("is a device or a pipe")


def _uncompress(path: Path) -> Path:
    """ESO delivers some files compressed with Unix compress (.Z): gunzip reads them."""
    if not path.name.endswith(".Z") or not shutil.which("gunzip"):
        return path
    subprocess.run(["gunzip", "-f", str(path)], check=True)
    return path.with_name(path.name[:-2])


# -- the whole fetch ------------------------------------------------------------------------------


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
    return rows


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
    endpoints = Endpoints.from_config(config)
    if archive == "heasarc":
        rows = heasarc_search(mission, target, radius_arcmin, endpoints)
    elif archive == "eso":
        rows = eso_search(mission, target, night, endpoints)
    elif archive == "mast":
        rows = mast_search(mission, target, radius_arcmin, endpoints)
    else:
        raise FetchError(f"unknown archive {archive!r}; use heasarc, eso or mast")
    new, _ = record_observations(engine, rows)
    save_search(engine, archive, mission.lower(), target, {"radius_arcmin": radius_arcmin, "night": night})
    return rows, new


def _queue_heasarc(engine: Engine, mission: str, obsids: list[str], dest: Path, endpoints: Endpoints) -> tuple[dict, int, int]:

    rows, urls = heasarc_locate(mission, obsids, endpoints)
    new, _ = record_observations(engine, rows)
    ids = observation_ids(engine, mission.lower(), list(urls))
    session = _session()
    queued, places = 0, {}
    for obsid, url in urls.items():
        directory = (dest / mission.lower() / obsid).resolve()
        files = [(file_url, directory / relative) for file_url, relative in list_directory(url, session)]
        if not files:
            raise FetchError(f"{mission} {obsid}: no files under {url}")
        queued += enqueue(engine, ids[obsid], files)
        places[obsid] = (ids[obsid], directory)
    return places, queued, new


def fetch_heasarc(engine: Engine, mission: str, obsids: list[str], *, dest: Path = Path("archive-data"), parallel: int = 4,
                  retries: int = 3, backoff: float = 1.0, timeout: float = 60.0, config: dict | None = None,
                  on_bytes=None) -> FetchSummary:
    """Queue, download, unpack and ingest the data of HEASARC observations."""
    endpoints = Endpoints.from_config(config)
    places, queued, new = _queue_heasarc(engine, mission, obsids, dest, endpoints)
    summary = FetchSummary(observations=len(places), new_observations=new, queued=queued)
    summary.queue = run_queue(engine, parallel=parallel, retries=retries, backoff=backoff, timeout=timeout,
                              observation_ids=[i for i, _ in places.values()], on_bytes=on_bytes)
    summary.linked = ingest_observations(engine, places, config)
    return summary


def fetch_eso(engine: Engine, instrument: str, *, target: str | None = None, night: str | None = None,
              with_calib: bool = False, dest: Path = Path("archive-data"), parallel: int = 4, retries: int = 3,
              backoff: float = 1.0, timeout: float = 60.0, config: dict | None = None, on_bytes=None) -> FetchSummary:
    """Search ESO for raw frames (and their calibrations), then queue,
    download and ingest them."""
    endpoints = Endpoints.from_config(config)
    rows = eso_search(instrument, target, night, endpoints, with_calib=with_calib)
    if not rows:
        raise FetchError(f"ESO has no {instrument} frames for {target or 'any target'}" + (f" on {night}" if night else ""))
    new, _ = record_observations(engine, rows)
    if target:
        save_search(engine, "eso", instrument.lower(), target, {"night": night, "with_calib": with_calib})
    mission = f"eso-{instrument.lower()}"
    ids = observation_ids(engine, mission, [r["obsid"] for r in rows])
    places, queued = {}, 0
    for row in rows:
        directory = (dest / mission / row["obsid"]).resolve()
        queued += enqueue(engine, ids[row["obsid"]], [(eso_url(row["obsid"], endpoints), directory / f"{row['obsid']}.fits")])
        places[row["obsid"]] = (ids[row["obsid"]], directory)
    summary = FetchSummary(observations=len(rows), new_observations=new, queued=queued)
    summary.queue = run_queue(engine, parallel=parallel, retries=retries, backoff=backoff, timeout=timeout,
                              observation_ids=list(ids.values()), on_bytes=on_bytes)
    summary.linked = ingest_observations(engine, places, config)
    return summary


def fetch_mast(engine: Engine, collection: str, obs_ids: list[str], *, dest: Path = Path("archive-data"), parallel: int = 4,
               retries: int = 3, backoff: float = 1.0, timeout: float = 60.0, config: dict | None = None,
               on_bytes=None) -> FetchSummary:
    """Queue, download and ingest the science products of MAST observations."""
    endpoints = Endpoints.from_config(config)
    mission = f"mast-{collection.lower()}"
    products = mast_products(engine, collection, obs_ids, endpoints)
    ids = observation_ids(engine, mission, obs_ids)
    places, queued = {}, 0
    for obs_id, files in products.items():
        directory = (dest / mission / obs_id).resolve()
        for product in files:
            queued += enqueue(engine, ids[obs_id], [(product["url"], directory / product["name"])])
        places[obs_id] = (ids[obs_id], directory)
    if queued:
        with transaction(engine, write=True) as conn:
            for obs_id, files in products.items():
                for product in files:
                    if product["size"]:
                        conn.execute(update(Download).where(Download.url == product["url"]).values(size_expected=int(product["size"])))
    summary = FetchSummary(observations=len(obs_ids), queued=queued)
    summary.queue = run_queue(engine, parallel=parallel, retries=retries, backoff=backoff, timeout=timeout,
                              observation_ids=list(ids.values()), on_bytes=on_bytes)
    summary.linked = ingest_observations(engine, places, config)
    return summary


def fetch_queue(engine: Engine, *, parallel: int = 4, retries: int = 3, backoff: float = 1.0, timeout: float = 60.0,
                config: dict | None = None, on_bytes=None) -> FetchSummary:
    """Run whatever is queued (after ``sync`` or ``--retry-failed``), then ingest it."""
    with transaction(engine) as conn:
        pending = conn.execute(select(Download.observation_id, Download.local_path).where(
            Download.state.in_(("queued", "downloading")))).all()
    summary = FetchSummary(queued=len(pending))
    summary.queue = run_queue(engine, parallel=parallel, retries=retries, backoff=backoff, timeout=timeout, on_bytes=on_bytes)
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
    summary.linked = ingest_observations(engine, places, config)
    return summary


def sync(engine: Engine, *, dest: Path = Path("archive-data"), config: dict | None = None) -> list[tuple[str, str, int]]:
    """Ask the archives again for every saved search; record new observations
    and queue their data. Returns (archive, target, new observations)."""
    endpoints = Endpoints.from_config(config)
    with transaction(engine) as conn:
        searches = conn.execute(select(Search.archive, Search.mission, Search.target, Search.params_json)).all()
    result = []
    for archive, mission, target, params_json in searches:
        params = json.loads(params_json)
        with transaction(engine) as conn:
            known = set(conn.execute(select(Observation.obsid).where(
                Observation.mission == (mission if archive == "heasarc" else f"{archive}-{mission}"))).scalars())
        if archive == "heasarc":
            rows = heasarc_search(mission, target, params.get("radius_arcmin", 10.0), endpoints)
        elif archive == "mast":
            rows = mast_search(mission, target, params.get("radius_arcmin", 10.0), endpoints)
        else:
            rows = eso_search(mission, target, params.get("night"), endpoints, with_calib=params.get("with_calib", False))
        fresh = [r for r in rows if r["obsid"] not in known]
        record_observations(engine, rows)
        save_search(engine, archive, mission, target, params)
        if fresh and archive == "heasarc":
            _queue_heasarc(engine, mission, [r["obsid"] for r in fresh], dest, endpoints)
        elif fresh and archive == "mast":
            for obs_id, files in mast_products(engine, mission, [r["obsid"] for r in fresh], endpoints).items():
                ids = observation_ids(engine, f"mast-{mission}", [obs_id])
                enqueue(engine, ids[obs_id], [(f["url"], (dest / f"mast-{mission}" / obs_id / f["name"]).resolve()) for f in files])
        elif fresh:
            ids = observation_ids(engine, f"eso-{mission}", [r["obsid"] for r in fresh])
            for row in fresh:
                directory = (dest / f"eso-{mission}" / row["obsid"]).resolve()
                enqueue(engine, ids[row["obsid"]], [(eso_url(row["obsid"], endpoints), directory / f"{row['obsid']}.fits")])
        result.append((archive, target, len(fresh)))
    return result
