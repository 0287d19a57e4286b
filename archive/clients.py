"""Archive clients: one class per archive behind one interface.

Each client turns a request (mission or instrument, target, obsids) into
observation rows and, per observation, the files to download. The catalog,
the download queue and unpacking live elsewhere (:mod:`archive.downloads`,
:mod:`archive.unpack`); :mod:`archive.fetch` puts them together. Clients are
chosen from :data:`CLIENTS` by name, never by a chain of ifs.

Network failures come out as :class:`FetchError` naming the archive.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import urljoin

from archive.exceptions import FetchError
from archive.keywords import MJD_EPOCH

HEASARC_TABLES = {"xmm": "xmmmaster", "nustar": "numaster", "chandra": "chanmaster"}
_EXPOSURE_COLUMNS = ("exposure", "duration", "exposure_a", "ontime", "exptime")


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


@dataclass
class Request:
    """What a user asked an archive for."""

    key: str  # a HEASARC mission, an ESO instrument, a MAST collection (lower case)
    obsids: list[str] = field(default_factory=list)
    target: str | None = None
    radius_arcmin: float = 10.0
    night: str | None = None
    with_calib: bool = False


@dataclass
class RemoteFile:
    url: str
    relpath: str  # below the observation's directory
    size: int | None = None


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


# -- the interface and its three archives ------------------------------------------------


class ArchiveClient:
    """One archive. ``name`` is how users and saved searches call it."""

    name = ""
    fetch_is_search = False  # a fetch that searches (by target) is kept for `sync` too

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints

    def mission(self, key: str) -> str:
        """The catalog's mission name for ``key``."""
        return f"{self.name}-{key.lower()}"

    def check(self, request: Request) -> None:
        """Refuse a request this archive cannot answer (one line)."""

    def search(self, request: Request) -> list[dict]:
        """Observation rows around a target."""
        raise NotImplementedError

    def wanted(self, request: Request, known: dict[str, str]) -> list[dict]:
        """The observation rows a fetch asks for; ``known``: obsid -> row_json
        of the observations of this mission already in the catalog (a row
        taken from there, not from the archive, is marked ``_known``)."""
        raise NotImplementedError

    def files(self, key: str, rows: list[dict]) -> dict[str, list[RemoteFile]]:
        """Per obsid of ``rows``, the files to download."""
        raise NotImplementedError


class HeasarcClient(ArchiveClient):
    name = "heasarc"

    def mission(self, key: str) -> str:
        return key.lower()

    def check(self, request: Request) -> None:
        _heasarc_table(request.key)
        if not request.obsids:
            raise FetchError(f"give the {request.key} observation ids to fetch, e.g. obsarch fetch {request.key} 0761220101")

    def search(self, request: Request) -> list[dict]:
        return heasarc_search(request.key, request.target, request.radius_arcmin, self.endpoints)

    def wanted(self, request: Request, known: dict[str, str]) -> list[dict]:
        rows, urls = heasarc_locate(request.key, request.obsids, self.endpoints)
        return [{**row, "_url": urls[row["obsid"]]} for row in rows]

    def files(self, key: str, rows: list[dict]) -> dict[str, list[RemoteFile]]:
        urls = {r["obsid"]: r["_url"] for r in rows if r.get("_url")}
        missing = [r["obsid"] for r in rows if r["obsid"] not in urls]
        if missing:  # rows of a search: ask HEASARC's datalink service where their data are
            urls.update(heasarc_locate(key, missing, self.endpoints)[1])
        session = http_session()
        result = {}
        for row in rows:
            url = urls[row["obsid"]]
            found = [RemoteFile(file_url, relative) for file_url, relative in list_directory(url, session)]
            if not found:
                raise FetchError(f"{key} {row['obsid']}: no files under {url}")
            result[row["obsid"]] = found
        return result


class EsoClient(ArchiveClient):
    name = "eso"
    fetch_is_search = True

    def check(self, request: Request) -> None:
        if not request.key:
            raise FetchError("fetch eso needs --instrument (e.g. MUSE)")

    def search(self, request: Request) -> list[dict]:
        return eso_search(request.key, request.target, request.night, self.endpoints, with_calib=request.with_calib)

    def wanted(self, request: Request, known: dict[str, str]) -> list[dict]:
        rows = self.search(request)
        if not rows:
            raise FetchError(f"ESO has no {request.key} frames for {request.target or 'any target'}"
                             + (f" on {request.night}" if request.night else ""))
        return rows

    def files(self, key: str, rows: list[dict]) -> dict[str, list[RemoteFile]]:
        return {r["obsid"]: [RemoteFile(eso_url(r["obsid"], self.endpoints), f"{r['obsid']}.fits")] for r in rows}


class MastClient(ArchiveClient):
    name = "mast"

    def check(self, request: Request) -> None:
        if not request.key or not request.obsids:
            raise FetchError("fetch mast needs --instrument COLLECTION (e.g. HST) and obs_ids found by `obsarch archive search mast`")

    def search(self, request: Request) -> list[dict]:
        return mast_search(request.key, request.target, request.radius_arcmin, self.endpoints)

    def wanted(self, request: Request, known: dict[str, str]) -> list[dict]:
        missing = [o for o in request.obsids if o not in known]
        if missing:
            raise FetchError(f"{', '.join(missing)}: not a known {request.key.upper()} observation; run `obsarch archive "
                             f"search mast --mission {request.key} --target ...` first")
        return [{"obsid": o, "_row_json": known[o], "_known": True} for o in request.obsids]

    def files(self, key: str, rows: list[dict]) -> dict[str, list[RemoteFile]]:
        return mast_products({r["obsid"]: r.get("_row_json") or r["row_json"] for r in rows}, self.endpoints)


@contextmanager
def reaching(archive: str):
    """Network and protocol failures of an archive (no network, a refused
    connection, an answer that is not what was asked) as one FetchError."""
    try:
        yield
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001  (requests, pyvo, astroquery and OS errors alike)
        from archive.exceptions import ObsarchError

        if isinstance(exc, ObsarchError):
            raise
        cause = " ".join(str(exc).split())
        cause = cause if len(cause) <= 160 else cause[:157] + "..."
        raise FetchError(f"{archive}: the archive cannot be reached or did not answer as expected ({type(exc).__name__}: "
                         f"{cause})") from exc


CLIENTS: dict[str, type[ArchiveClient]] = {c.name: c for c in (HeasarcClient, EsoClient, MastClient)}
# What `obsarch fetch MISSION` names: an archive, or one of HEASARC's missions.
FETCH_NAMES: dict[str, type[ArchiveClient]] = {**CLIENTS, **{m: HeasarcClient for m in HEASARC_TABLES}}


def client(name: str, endpoints: Endpoints) -> ArchiveClient:
    """The client of archive ``name`` (heasarc, eso, mast)."""
    try:
        return CLIENTS[name.lower()](endpoints)
    except KeyError:
        raise FetchError(f"unknown archive {name!r}; use {', '.join(CLIENTS)}") from None


def mast_products(known: dict[str, str], endpoints: Endpoints) -> dict[str, list[RemoteFile]]:
    """Science products (FITS) of MAST observations; ``known``: obs_id -> the row_json its search stored."""
    groups = {str(json.loads(row_json)["obsid"]): o for o, row_json in known.items()}
    mast = _mast(endpoints)
    products = mast.get_product_list(list(groups))
    result: dict[str, list[RemoteFile]] = {o: [] for o in known}
    for row in products:
        row = _plain(row)
        name = str(row.get("productFilename") or "")
        if row.get("productType") != "SCIENCE" or not name.lower().endswith((".fits", ".fits.gz", ".fit")):
            continue
        obs_id = groups.get(str(row.get("obsID") or row.get("parent_obsid")))
        if obs_id:
            url = f"{mast._portal_api_connection.MAST_DOWNLOAD_URL}?uri={row['dataURI']}"
            size = row.get("size")
            result[obs_id].append(RemoteFile(url, name, int(size) if size else None))
    return result


def http_session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "obsarch (astroquery)"
    return session
