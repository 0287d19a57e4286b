"""A local stand-in for the archives, started by the tests.

It answers what astroquery and pyvo really ask: HEASARC's TAP service
(``/xamin/vo/tap/sync``, ``/tables``) and datalink, directory listings and
files (with Range requests), ESO's query form and CalSelector, its data
portal, and Sesame. Archive answers are recorded in the formats the archives
use (VOTable, HTML form, CSV, association XML), so the real client code runs.
Files can misbehave: fail with HTTP 500 a few times, stall, break off
half-way, or be a malicious tar.
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from astropy.io import fits
from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile


def fits_bytes(header: dict, seed: int = 0, shape=(16, 16)) -> bytes:
    hdu = fits.PrimaryHDU(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32))
    for key, value in header.items():
        hdu.header[key] = value
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


XMM_ROWS = [  # obsid, name, ra, dec, start MJD, end MJD, public MJD, duration
    ("0013140101", "NGC 5506", 213.3121, -3.2075, 51745.28, 51745.62, 52110.0, 30000.0),
    ("0201830201", "NGC 5506", 213.3121, -3.2075, 53011.11, 53011.35, 53400.0, 20000.0),
    ("0761220101", "NGC 5506", 213.3121, -3.2075, 57560.50, 57561.60, 57950.0, 95000.0),
]
NUSTAR_ROWS = [("60061323002", "NGC 5506", 213.3121, -3.2075, 56760.1, 56760.9, 56800.0, 56000.0)]


class Archive:
    """Content and behaviour of the stand-in archives."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_times: dict[str, int] = {}  # path -> HTTP 500 this many times
        self.stall: set[str] = set()  # path -> never answers in time
        self.break_once: set[str] = set()  # path -> sends half, then closes, the first time
        self.requests: list[tuple[str, str, dict]] = []
        self.xmm_rows = list(XMM_ROWS)
        self.eso_rows = [
            ("MUSE.2014-07-28T01:10:11.001", "NGC 6397", 265.175, -53.674, 56866.049, "2015-07-28"),
            ("MUSE.2014-07-28T01:25:12.002", "NGC 6397", 265.176, -53.675, 56866.059, "2015-07-28"),
        ]
        self.eso_calibs = ["MUSE.2014-07-27T10:00:00.100", "MUSE.2014-07-27T10:05:00.200"]
        for obsid, *_ in XMM_ROWS + NUSTAR_ROWS:
            mission = "xmm" if obsid.startswith("0") else "nustar"
            base = f"/FTP/{mission}/data/{obsid}/"
            self.files[base + "odf/events.fits"] = fits_bytes({"OBS_ID": obsid, "TELESCOP": mission.upper(), "EXPOSURE": 1000.0}, 1)
            self.files[base + "pps/spectrum.fits.gz"] = _gzip(fits_bytes({"OBS_ID": obsid, "TELESCOP": mission.upper()}, 2))
        for dp_id, *_ in self.eso_rows:
            self.files[f"/dataPortal/file/{dp_id}"] = fits_bytes({"INSTRUME": "MUSE", "HIERARCH ESO DPR TYPE": "OBJECT",
                                                                 "DATE-OBS": dp_id[5:], "HIERARCH ESO OBS ID": 1}, 3)
        self.files["/mast/24842601_flt.fits"] = fits_bytes({"TELESCOP": "HST", "INSTRUME": "WFC3", "ROOTNAME": "icdm01010"}, 7)
        for dp_id in self.eso_calibs:
            self.files[f"/dataPortal/file/{dp_id}"] = fits_bytes({"INSTRUME": "MUSE", "HIERARCH ESO DPR TYPE": "BIAS",
                                                                 "DATE-OBS": dp_id[5:]}, 4)


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def malicious_tar(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        good = tarfile.TarInfo("data/ok.fits")
        payload = fits_bytes({"OBJECT": "fine"})
        good.size = len(payload)
        tar.addfile(good, io.BytesIO(payload))
        bad = tarfile.TarInfo({"dotdot": "../../escaped.txt", "absolute": "/tmp/obsarch-absolute-escape.txt",
                               "link": "data/link"}.get(kind, "x"))
        if kind == "link":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(bad)
        else:
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
    return buffer.getvalue()


def good_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, seed in (("odf/a.fits", 5), ("pps/b.fits", 6)):
            payload = fits_bytes({"OBS_ID": "0999999999", "TELESCOP": "XMM"}, seed)
            info = tarfile.TarInfo(f"0999999999/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _votable(columns: list[tuple[str, str]], rows: list[tuple]) -> bytes:
    votable = VOTableFile()
    resource = Resource(type="results")
    votable.resources.append(resource)
    resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    table = TableElement(votable)
    resource.tables.append(table)
    for name, kind in columns:
        if kind == "char":
            table.fields.append(Field(votable, name=name, datatype="char", arraysize="*"))
        else:
            table.fields.append(Field(votable, name=name, datatype=kind))
    table.create_arrays(len(rows))
    for i, row in enumerate(rows):
        table.array[i] = row
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


HEASARC_COLUMNS = [("obsid", "char"), ("name", "char"), ("ra", "double"), ("dec", "double"), ("time", "double"),
                   ("end_time", "double"), ("public_date", "double"), ("duration", "double"), ("__row", "char")]
TABLESET = b"""<?xml version="1.0"?>
<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <schema><name>public</name>
  <table><name>xmmmaster</name></table><table><name>numaster</name></table><table><name>chanmaster</name></table>
 </schema></vosi:tableset>"""
ESO_FORM = """<html><body><form id="queryform" action="/wdb/wdb/eso/{instrument}/query" method="post">
<input type="text" name="target" value=""><input type="text" name="night" value="">
<input type="hidden" name="wdbo" value="html/display"><input type="submit" value="Search"></form></body></html>"""


class Handler(BaseHTTPRequestHandler):
    archive: Archive
    base: str

    def log_message(self, *args):  # quiet
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # a client that gave up (the timeout test)
            pass

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return {k: v for k, v in parse_qs(raw.decode(errors="replace")).items()}

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        path = urlparse(self.path).path
        form = self._body()
        self.archive.requests.append(("POST", path, form))
        if mast_routes(self, "POST", path, form):
            return None
        if path.endswith("/tap/sync"):
            return self._tap(form.get("QUERY", [""])[0])
        if path.startswith("/xamin/vo/datalink/"):
            ids = form.get("ID", [])
            rows = []
            for row_id in ids:
                obsid = row_id.split(":")[-1]
                mission = "xmm" if obsid.startswith("0") else "nustar"
                rows.append((row_id, f"{self.base}/FTP/{mission}/data/{obsid}/", "directory", 2000, "", "#this"))
            return self._send(200, _votable([("ID", "char"), ("access_url", "char"), ("content_type", "char"),
                                             ("content_length", "long"), ("error_message", "char"), ("semantics", "char")], rows),
                              "application/x-votable+xml")
        match = re.match(r"/wdb/wdb/eso/(\w+)/query", path)
        if match:
            return self._eso_query(form)
        if path == "/calselector":
            names = "".join(f'<file name="{name}" category="MUSE_BIAS"/>' for name in self.archive.eso_calibs)
            xml = f'<?xml version="1.0"?><association><mainFiles><file name="{form.get("dp_id", [""])[0]}"/></mainFiles>{names}</association>'
            return self._send(200, xml.encode(), "application/xml", {"Content-Disposition": 'attachment; filename="assoc.xml"'})
        return self._send(404, b"not found", "text/plain")

    def _tap(self, query: str):
        rows = []
        if "xmmmaster" in query:
            rows = self.archive.xmm_rows
        elif "numaster" in query:
            rows = NUSTAR_ROWS
        wanted = re.findall(r"'(\d{9,11})'", query) if "obsid IN" in query else None
        chosen = [r for r in rows if wanted is None or r[0] in wanted]
        table = [(*r, f"{'xmm' if r[0].startswith('0') else 'nustar'}:{r[0]}") for r in chosen]
        return self._send(200, _votable(HEASARC_COLUMNS, table), "application/x-votable+xml")

    def _eso_query(self, form: dict):
        target = form.get("target", [""])[0]
        rows = [r for r in self.archive.eso_rows if not target or r[1] == target]
        lines = ['"DP.ID","OBS.TARG.NAME","RA","DEC","MJD-OBS","Release Date"']
        lines += [f'"{r[0]}","{r[1]}",{r[2]},{r[3]},{r[4]},"{r[5]}"' for r in rows]
        body = ("# garbage first line\n" + "\n".join(lines) + "\n").encode()
        return self._send(200, body, "text/csv")

    def do_GET(self):
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        self.archive.requests.append(("GET", path, {**dict(self.headers), "query": unquote(parsed.query)}))
        if path.endswith("/tap/tables"):
            return self._send(200, TABLESET, "text/xml")
        if path.startswith("/sesame/"):
            return self._send(200, b"# NGC 5506\n%J 213.3121 -3.2075 = 14 13 14.9 -03 12 27\n", "text/plain")
        match = re.match(r"/wdb/wdb/eso/(\w+)/form", path)
        if match:
            return self._send(200, ESO_FORM.format(instrument=match[1]).encode(), "text/html")
        if path.endswith("/") and any(name.startswith(path) for name in self.archive.files):
            return self._listing(path)
        if path in self.archive.files:
            return self._file(path)
        if path == "/api/v0.1/Download/file":
            name = parse_qs(parsed.query)["uri"][0].rsplit("/", 1)[-1]
            return self._file(f"/mast/{name}")
        return self._send(404, b"not found", "text/plain")

    def _listing(self, path: str):
        entries = set()
        for name in self.archive.files:
            if name.startswith(path):
                rest = name[len(path):]
                entries.add(rest.split("/")[0] + ("/" if "/" in rest else ""))
        links = "".join(f'<a href="{e}">{e}</a>\n' for e in sorted(entries))
        body = f'<html><body><a href="../">Parent Directory</a>\n<a href="?C=N;O=D">Name</a>\n{links}</body></html>'
        return self._send(200, body.encode(), "text/html")

    def _file(self, path: str):
        if self.archive.fail_times.get(path, 0) > 0:
            self.archive.fail_times[path] -= 1
            return self._send(500, b"internal error", "text/plain")
        if path in self.archive.stall:
            time.sleep(3)
            return self._send(200, b"late")
        data = self.archive.files[path]
        start = 0
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            if start >= len(data):
                return self._send(416, b"", "text/plain")
        if path in self.archive.break_once:
            self.archive.break_once.discard(path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        body = data[start:]
        status = 206 if start else 200
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        disposition = path.rsplit("/", 1)[-1]
        headers["Content-Disposition"] = f'attachment; filename="{disposition}"'
        return self._send(status, body, headers=headers)


class Server:
    def __init__(self):
        self.archive = Archive()
        handler = type("BoundHandler", (Handler,), {"archive": self.archive})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def config(self) -> dict:
        return {"archives": {"heasarc_vo": f"{self.url}/xamin/vo", "eso_query": f"{self.url}/wdb/wdb/eso",
                             "eso_calselector": f"{self.url}/calselector", "eso_download": f"{self.url}/dataPortal/file/",
                             "mast": self.url, "sesame": f"{self.url}/sesame/"}}


# -- MAST's Mashup API ----------------------------------------------------------------

MAST_OBSERVATIONS = [
    {"obsid": "24842601", "obs_id": "icdm01010", "obs_collection": "HST", "target_name": "NGC5506", "s_ra": 213.31,
     "s_dec": -3.21, "t_min": 57000.1, "t_max": 57000.2, "t_exptime": 2400.0, "t_obs_release": 57365.0,
     "instrument_name": "WFC3/IR"},
    {"obsid": "90000001", "obs_id": "tess-s0023", "obs_collection": "TESS", "target_name": "TIC 1", "s_ra": 213.3,
     "s_dec": -3.2, "t_min": 58900.0, "t_max": 58925.0, "t_exptime": 1800.0, "t_obs_release": 59000.0,
     "instrument_name": "Photometer"},
]


def _mashup(rows: list[dict]) -> bytes:
    import json

    fields = [{"name": name, "type": "float" if isinstance(value, float) else "string"} for name, value in rows[0].items()] if rows else []
    return json.dumps({"status": "COMPLETE", "msg": "", "data": rows, "fields": fields,
                       "paging": {"page": 1, "pageSize": len(rows), "pagesFiltered": 1, "rows": len(rows),
                                  "rowsFiltered": len(rows), "rowsTotal": len(rows)}}).encode()


def mast_routes(handler, method: str, path: str, body: dict) -> bool:
    """Answer MAST's API; True when the request was for it."""
    import json

    if path == "/portal/Mashup/Mashup.asmx/columnsconfig":
        handler._send(200, b"{}", "application/json")
        return True
    if path == "/api/v0/invoke":
        request = json.loads(body.get("request", ["{}"])[0])
        if request.get("service") == "Mast.Caom.Cone":
            handler._send(200, _mashup(MAST_OBSERVATIONS), "application/json")
        else:  # Mast.Caom.Products
            group = request["params"]["obsid"]
            rows = [{"obsID": group, "productType": "SCIENCE", "productFilename": f"{group}_flt.fits",
                     "dataURI": f"mast:HST/product/{group}_flt.fits", "size": float(len(handler.archive.files[f"/mast/{group}_flt.fits"]))},
                    {"obsID": group, "productType": "AUXILIARY", "productFilename": f"{group}_log.txt",
                     "dataURI": f"mast:HST/product/{group}_log.txt", "size": 10.0}]
            handler._send(200, _mashup(rows), "application/json")
        return True
    return False
