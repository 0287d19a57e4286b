"""The review web app: ``create_app(url)`` is a Starlette application over
one catalog. Every page reads through :mod:`archive.catalog` and
:mod:`processing`; grading writes through :func:`processing.quality.flag_exposures`,
exactly as ``obsarch flag`` records a person's flag.

HTTP interface (read-only unless writes are allowed):

- ``GET /exposures?q=SELECTION&columns=&sort=&limit=`` the search page
- ``GET /exposures.csv?q=...`` / ``GET /exposures.json?q=...`` the rows ``obsarch query --format csv|json`` gives
- ``GET /exposures/ID`` the frame page; ``GET /exposures/ID/thumbnail.png``; ``GET /exposures/ID/preview.png?stretch=&hdu=``
- ``POST /exposures/ID/flags`` form fields ``grade``, ``reason``, ``note`` (403 unless writes are allowed)
- ``POST /flags/retract`` form field ``ids``: take back one's own flags this server just made (the night view's undo)

Every bad input gets one line and a 4xx: 404 for an id nothing has (ids beyond 64 bits too), 400 naming the
parameter otherwise (a limit below 0, a NUL byte, form data that is not UTF-8), never a database's message.
- ``GET /nights``, ``GET /nights/NIGHT?band=B`` the night view; ``GET /processing``, ``GET /processing/runs/ID``
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from archive.catalog import LARGEST_LIMIT, Catalog, first_rows
from archive.detectors import is_detector, parse_shape
from archive.exceptions import NotFoundError, ObsarchError
from archive.formats import counted, json_value
from archive.models import Exposure, File, Flag
from archive.query import BoolOp, Column, Compare, In, IsNull, current_flag_order
from archive.query import ids as query_ids
from archive.results import output_rows, to_csv, to_json
from processing import grouping, offsets, quality, regions, runs
from processing.report import GRADE_COLOURS, STRETCHES, picture, picture_points, write_png
from web.plots import PLOTS, time_plot
from web.security import Guard, Policy
from web.templating import STATIC, environment
from web.thumbnails import Item, ThumbnailCache, check_directory, default_directory

NIGHT_COLUMNS = ["id", "file_id", "version", "path", "size", "header_hash", "frame_number", "date_obs", "exptime", "band", "frame_type",
                 "object", "background", "fwhm", "elongation", "nstars", "grade", "reason", "flag_source"]
NIGHT_ROW_COLUMNS = NIGHT_COLUMNS[:-3]  # the night view reads the current flags apart (Review.night_rows)
PREVIEW_PX = 1024
THUMBNAIL_WAIT_S = 60.0
DEFAULT_LIMIT = 500
LARGEST_ID = 2**31 - 1  # ids are 32-bit integer columns (PostgreSQL refuses a larger parameter): a larger id names nothing
UNDO_WINDOW_S = 15 * 60


INGESTS_SHOWN = 20  # the processing page's newest ingest runs (obsarch runs lists more)


def records(frame) -> list[dict]:
    """DataFrame rows as dicts, with None for missing values (a NaN, a value
    that is not a number, stays: :func:`archive.results.output_rows`)."""
    names = list(frame.columns)
    return [dict(zip(names, row, strict=True)) for row in output_rows(frame)]


class Review:
    """The state the pages share: the catalog, the thumbnail cache, the templates."""

    def __init__(self, catalog: Catalog, policy: Policy, thumbnails: ThumbnailCache):
        self.catalog, self.policy, self.thumbnails = catalog, policy, thumbnails
        self.templates = Jinja2Templates(env=environment())
        self.made: dict[int, tuple[str, float]] = {}  # flag id -> (who, when): what the undo may take back

    @property
    def engine(self):
        return self.catalog.engine

    def page(self, request: Request, name: str, status: int = 200, **context) -> Response:
        context.update(request=request, can_write=self.policy.allow_write, who=getattr(request.state, "who", None),
                       progress=self.thumbnails.progress, grade_colours=GRADE_COLOURS)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def exposure_row(self, exposure_id: int) -> dict:
        names, rows = self.catalog.rows(Compare(Column("id"), "==", exposure_id), columns=NIGHT_COLUMNS + [
            "instrument", "telescope", "obsid", "night", "mjd", "ra", "dec", "airmass", "readout_mode", "status", "product"])
        if not rows:
            raise HTTPException(404, f"no exposure with id {exposure_id}")
        row = dict(zip(names, rows[0], strict=True))
        row["mtime_ns"] = self.mtimes(select(Exposure.id).where(Exposure.id == exposure_id)).get(exposure_id)
        return row

    def mtimes(self, exposure_ids) -> dict[int, int | None]:
        """The stored mtime of each exposure's file (a SELECT of exposure ids): part of what names its picture."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Exposure.id, File.mtime_ns).join(File, File.id == Exposure.file_id)
                                     .where(Exposure.id.in_(exposure_ids))).all())

    def item(self, row: dict) -> Item:
        size = row.get("size")
        return Item(int(row["file_id"]), int(row["version"]), row["path"], None if size is None else int(size),
                    row.get("mtime_ns"), row.get("header_hash"))

    # -- search ------------------------------------------------------------------

    def search(self, request: Request, limit: int | None, one_more: bool = False) -> tuple[object, str | None, bool]:
        """The rows of ``q`` with ``columns``, ``sort`` and ``limit`` as `obsarch query` takes them, and
        whether more match (``one_more``: one row past the limit is read to know, as the CLI does)."""
        params = request.query_params
        asked = None if limit is None else min(limit + 1, LARGEST_LIMIT) if one_more else limit
        try:
            frame = self.catalog.query(params.get("q") or None, columns=params.get("columns") or None,
                                       sort=params.get("sort") or None, limit=asked)
        except ObsarchError as exc:
            return None, str(exc), False
        more = one_more and limit is not None and len(frame) > limit
        return (frame.iloc[:limit] if more else frame), None, more

    async def exposures(self, request: Request) -> Response:
        limit = _count(request.query_params, "limit", DEFAULT_LIMIT)  # a page shows the first rows
        frame, error, more = await run_in_threadpool(self.search, request, limit, True)
        template = "_results.html" if request.headers.get("hx-request") else "search.html"
        rows = records(frame) if frame is not None else []
        hints = await run_in_threadpool(self.catalog.hints, request.query_params.get("q")) if frame is not None and not rows else []
        return self.page(request, template, 400 if error else 200, error=error, rows=rows, hints=hints, more=more,
                         columns=list(frame.columns) if frame is not None else [], q=request.query_params.get("q", ""),
                         chosen=request.query_params.get("columns", ""), sort=request.query_params.get("sort", ""),
                         limit=limit, fields=_field_names())

    async def exposures_csv(self, request: Request) -> Response:
        frame, error, _ = await run_in_threadpool(self.search, request, _count(request.query_params, "limit", None))
        if error:
            return PlainTextResponse(error + "\n", 400)
        return Response(to_csv(frame), media_type="text/csv; charset=utf-8")

    async def exposures_json(self, request: Request) -> Response:
        frame, error, _ = await run_in_threadpool(self.search, request, _count(request.query_params, "limit", None))
        if error:
            return JSONResponse({"error": error}, 400)
        return Response(to_json(frame), media_type="application/json")

    # -- nights ------------------------------------------------------------------

    async def nights(self, request: Request) -> Response:
        rows = await run_in_threadpool(self.catalog.nights)
        return self.page(request, "nights.html", nights=rows)

    @staticmethod
    def night_selection(night: str, band: str | None, products: bool = False) -> BoolOp:
        """The night's raw frames (of ``band``), the ones ``/nights`` counts;
        ``products``: the masters, calibrated frames and stacks made of them instead."""
        conditions = [Compare(Column("night"), "==", night), IsNull(Column("product"), negate=products)]
        if band is not None:
            conditions.append(IsNull(Column("band")) if band == "" else Compare(Column("band"), "==", band))
        return BoolOp("and", tuple(conditions))

    def night_rows(self, night: str, band: str | None) -> list[dict]:
        """The night's raw frames with their metrics and current flag, in time order."""
        # plain rows, not a DataFrame: the page reads each value once
        names, rows = self.catalog.rows(self.night_selection(night, band), columns=NIGHT_ROW_COLUMNS,
                                        sort="date_obs,frame_number")
        # The current flag of every frame from one read of the night's flags, not three
        # correlated look-ups per frame (a seq scan each on a small PostgreSQL table).
        night_ids = [row[names.index("id")] for row in rows]
        current, mtimes = {}, self.mtimes(night_ids)
        with self.engine.connect() as conn:
            for exposure_id, grade, reason, source in conn.execute(
                    select(Flag.exposure_id, Flag.grade, Flag.reason, Flag.source)
                    .where(Flag.exposure_id.in_(night_ids)).order_by(Flag.exposure_id, *current_flag_order(Flag))):
                current.setdefault(exposure_id, (grade, reason, source))  # the first is the current one
        answer = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            # no flag: no grade (None), as the cards and plots take it; 'ungraded' is the selection language's word
            record["grade"], record["reason"], record["flag_source"] = current.get(record["id"], (None, None, None))
            record["mtime_ns"] = mtimes.get(record["id"])
            answer.append(record)
        return answer

    async def night(self, request: Request) -> Response:
        night = request.path_params["night"]
        band = request.query_params.get("band")
        rows = await run_in_threadpool(self.night_rows, night, band)
        products = await run_in_threadpool(self.night_products, night, band)
        if not rows:
            raise HTTPException(404, f"no raw frames in night {night}" + (f" band {band}" if band else "")
                                + (f"; it has {counted(products, 'product')}: search with product is not null" if products else ""))
        pending = []
        for row in rows:
            item = self.item(row)
            state, reason = self.thumbnails.state(item)
            if state == "ready":
                row["picture"] = ("img", f"/exposures/{row['id']}/thumbnail.png")
            elif state == "failed":
                row["picture"] = ("problem", reason)
            else:
                row["picture"] = ("pending", None)
                pending.append(item)
        self.thumbnails.request(pending)
        plots = [p for p in (time_plot(rows, metric, label) for metric, label in PLOTS) if p]
        if band is None:  # the rows are the whole night: their bands are the night's
            bands = sorted({r["band"] or "" for r in rows})
        else:
            bands = sorted({r["band"] or "" for r in await run_in_threadpool(self.catalog.nights, night)})
        return self.page(request, "night.html", night=night, band=band, rows=rows, plots=plots, bands=bands,
                         grades=quality.GRADES, reasons=quality.REASONS, products=products)

    def night_products(self, night: str, band: str | None) -> int:
        """How many products (masters, calibrated frames, stacks) the night
        has: its view shows raw frames only, as ``/nights`` and ``obsarch
        summary`` count them, and links to a search for these."""
        _, rows = self.catalog.rows(self.night_selection(night, band, products=True), columns="id")
        return len(rows)

    def _items(self, ids: list[int]) -> dict[int, Item]:
        names, rows = self.catalog.rows(In(Column("id"), tuple(ids)), columns=["id", "file_id", "version", "path", "size",
                                                                            "header_hash"])
        mtimes = self.mtimes(ids)
        return {row[0]: self.item({**dict(zip(names, row, strict=True)), "mtime_ns": mtimes.get(row[0])}) for row in rows}

    async def thumbnail_states(self, request: Request) -> Response:
        """{id: {state, reason}} of the thumbnails of ``ids`` (the night view asks while they are made)."""
        ids = _ids(request.query_params.get("ids", ""), "exposure")[:500]
        items = await run_in_threadpool(self._items, ids) if ids else {}
        answer = {}
        for exposure_id, item in items.items():
            state, reason = self.thumbnails.state(item)
            answer[exposure_id] = {"state": state, "reason": reason}
        return JSONResponse(answer)

    async def progress(self, request: Request) -> Response:
        return self.page(request, "_progress.html")

    # -- one exposure ---------------------------------------------------------------

    async def thumbnail_png(self, request: Request) -> Response:
        row = await run_in_threadpool(self.exposure_row, _path_id(request))
        item = self.item(row)
        if self.thumbnails.state(item)[0] == "ready" and not self.thumbnails.png(item).exists():
            self.thumbnails.forget(item)  # the cache directory was removed while serving
        state, reason = await run_in_threadpool(self.thumbnails.wait, item, THUMBNAIL_WAIT_S)
        if state == "ready":
            return _png(request, self.thumbnails.png(item))
        if state == "failed":
            return PlainTextResponse(f"no picture: {reason}\n", 404)
        return PlainTextResponse("the thumbnail is being made; ask again\n", 503, headers={"Retry-After": "2"})

    async def preview_png(self, request: Request) -> Response:
        row = await run_in_threadpool(self.exposure_row, _path_id(request))
        how = request.query_params.get("stretch", "zscale")
        hdu = request.query_params.get("hdu") or None
        if how not in STRETCHES:
            return PlainTextResponse(f"unknown stretch {how!r}; use one of {', '.join(STRETCHES)}\n", 400)
        if hdu is not None and not re.fullmatch(r"[0-9]{1,6}", hdu):  # not str.isdigit: it takes '²', which int() refuses
            return PlainTextResponse(f"hdu {_shown(hdu)}: give an HDU index (0, 1, ...)\n", 400)
        hdu_index = None if hdu is None else int(hdu)
        name = f"{self.item(row).key}-{how}-{'all' if hdu_index is None else hdu_index}.png"
        target = self.thumbnails.directory / "previews" / name
        if target.exists():
            return _png(request, target)
        try:
            image = await run_in_threadpool(picture, row["path"], PREVIEW_PX, how, hdu_index)
        except (quality.QualityError, ValueError, OSError) as exc:
            return PlainTextResponse(f"no picture: {exc}\n", 404)
        try:
            await run_in_threadpool(write_png, image, target)
        except OSError:  # the cache cannot keep it: the picture is still right, sent without being kept
            return Response(await run_in_threadpool(_png_bytes, image), media_type="image/png")
        return _png(request, target)

    def frame_context(self, exposure_id: int) -> dict:
        row = self.exposure_row(exposure_id)
        headers = self.catalog.headers(exposure_id)
        detectors = [h for h in headers if is_detector(h["type"], h["extname"], parse_shape(h["shape"]))]
        return {
            "row": row, "headers": headers, "metrics": quality.metrics_of(self.engine, exposure_id),
            "detector_metrics": quality.detector_metrics_of(self.engine, exposure_id),
            "flags": quality.flag_history(self.engine, exposure_id),
            "offsets": offsets.offsets_table(self.engine, ids=[exposure_id]),
            "groups": grouping.groups_of(self.engine, exposure_id), "regions": regions.regions_of(self.engine, exposure_id),
            "made_from": runs.lineage(self.engine, row["file_id"]), "made_into": runs.derived(self.engine, row["file_id"]),
            "detectors": detectors, "matched": self.matched_overlay(exposure_id, detectors),
        }

    def matched_overlay(self, exposure_id: int, detectors: list[dict]) -> dict:
        """The current offset's matched stars in the preview's pixels: ``points``
        (empty when none are stored), the preview's ``width`` and ``height``,
        and ``why`` when they cannot be drawn."""
        pairs = offsets.matched_stars(self.engine, exposure_id)
        if not len(pairs):
            return {"points": [], "why": "no matched stars stored"}
        shape = parse_shape(detectors[0]["shape"])[-2:] if len(detectors) == 1 else ()
        if len(shape) != 2:  # the registration used one image: a mosaic's tiles are not its pixels
            return {"points": [], "why": f"{len(pairs)} matched stars stored; drawn only on a one-image preview"}
        points, (width, height) = picture_points(pairs[:, :2], shape, PREVIEW_PX)
        return {"points": points.round(2).tolist(), "width": width, "height": height, "why": None}

    async def exposure(self, request: Request) -> Response:
        context = await run_in_threadpool(self.frame_context, _path_id(request))
        return self.page(request, "frame.html", stretches=STRETCHES, grades=quality.GRADES, reasons=quality.REASONS,
                         filter="", **context)

    async def headers(self, request: Request) -> Response:
        exposure_id = _path_id(request)
        try:
            headers = await run_in_threadpool(self.catalog.headers, exposure_id)
        except NotFoundError:
            raise HTTPException(404, f"no exposure with id {exposure_id}") from None
        return self.page(request, "_headers.html", headers=headers, filter=request.query_params.get("filter", ""),
                         row={"id": exposure_id})

    # -- grading ----------------------------------------------------------------

    async def post_flag(self, request: Request) -> Response:
        exposure_id = _path_id(request)
        form = await _form(request)
        grade = (form.get("grade") or "").strip()
        reason = (form.get("reason") or "").strip() or None
        note = (form.get("note") or "").strip() or None
        try:
            flag_ids = await run_in_threadpool(quality.flag_exposures, self.engine, [exposure_id], grade, reason=reason,
                                               note=note, who=request.state.who)
        except NotFoundError as exc:
            return PlainTextResponse(f"{exc}\n", 404)
        except ObsarchError as exc:
            return PlainTextResponse(f"{exc}\n", 400)
        self.remember(flag_ids, request.state.who)
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/exposures/{exposure_id}", 303)
        return JSONResponse({"exposure_id": exposure_id, "flag_ids": flag_ids, "grade": grade,
                             "reason": quality.person_reason(grade, reason), "note": note, "who": request.state.who}, 201)

    def remember(self, flag_ids: list[int], who: str) -> None:
        """Note the flags just made, for the undo; forget those past its window."""
        now = time.monotonic()
        self.made = {i: made for i, made in self.made.items() if now - made[1] < UNDO_WINDOW_S}
        self.made.update((i, (who, now)) for i in flag_ids)

    async def retract(self, request: Request) -> Response:
        """The night view's undo: take back flags this server made for this person in the last
        ``UNDO_WINDOW_S`` seconds, and only those.

        A flag's history is kept (DESIGN.md): one recorded by ``obsarch flag``, by someone else, by
        an earlier run of the server or longer ago is never removed here, and the undo is refused in
        one line (record a new grade instead). What it removes is a slip the person takes back at
        once, before anything else could rely on it.
        """
        ids = _ids(str((await _form(request)).get("ids", "")), "flag")
        if not ids:  # an undo of nothing is a mistake of the page, not a success
            return PlainTextResponse("ids: give the flags to take back, e.g. ids=12,13\n", 400)
        who, now = request.state.who, time.monotonic()
        stale = sorted({i for i in ids if i not in self.made or self.made[i][0] != who or now - self.made[i][1] >= UNDO_WINDOW_S})
        if stale:
            return PlainTextResponse(
                f"flags {', '.join(map(str, stale[:10]))} are not {who}'s to take back: an undo takes back only flags made "
                f"through this server in the last {UNDO_WINDOW_S // 60} minutes; the rest stay in the history\n", 403)
        try:
            removed, exposures = await run_in_threadpool(quality.retract_flags, self.engine, ids, who)
        except ObsarchError as exc:
            return PlainTextResponse(f"{exc}\n", 403)
        for i in ids:
            self.made.pop(i, None)
        # each frame's grade now, as the night view shows it: a flag made since (the command line, another
        # person) is current, not the grade the page showed before the undone one
        now = await run_in_threadpool(lambda: self.catalog.query(query_ids(exposures), columns="id,grade,reason,flag_source"))
        current = {str(i): {"grade": g, "reason": json_value(r), "source": json_value(s)}
                   for i, g, r, s in now.itertuples(index=False)}
        return JSONResponse({"retracted": removed, "current": current})

    # -- processing ----------------------------------------------------------------

    async def processing(self, request: Request) -> Response:
        limit, step = _count(request.query_params, "limit", 100), request.query_params.get("step") or None
        # the page says when more exist, as `obsarch runs` does
        run_rows, more = await run_in_threadpool(first_rows, lambda n: runs.list_runs(self.engine, n, step), limit)
        stale = await run_in_threadpool(runs.stale_products, self.engine)
        ingests, more_ingests = await run_in_threadpool(first_rows, self.catalog.ingests, INGESTS_SHOWN)
        return self.page(request, "processing.html", runs=run_rows, more=more, limit=limit, step=step, stale=stale,
                         ingests=ingests, more_ingests=more_ingests)

    async def run(self, request: Request) -> Response:
        run_id = _path_id(request, "run")
        try:
            record = await run_in_threadpool(runs.run_detail, self.engine, run_id)
            # what it did to each item, as `obsarch runs show` lists it (a tool's run per item, each frame measured...)
            record["items"] = (await run_in_threadpool(self.catalog.run, str(run_id)))["items"]
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        return self.page(request, "run.html", run=record)

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/nights", 307)


def settle_heap() -> None:
    """Keep the collector off what lives as long as the server.

    What is loaded at start-up (SQLAlchemy, numpy, astropy, pandas: a few
    hundred thousand objects) would otherwise be walked by every full
    collection, which a night page's allocations trigger every ten pages or
    so: an 80-120 ms pause in one page of ten. Frozen, it is never walked.
    """
    import archive.results  # noqa: F401  pandas, which the search pages load: loaded before the freeze

    gc.collect()
    gc.freeze()


def _shown(value: str) -> str:
    return repr(value[:30] + ("..." if len(value) > 30 else ""))


def _count(params, name: str, default: int | None) -> int | None:
    """A non-negative 64-bit integer parameter (a limit), or a 400 naming it, as the CLI's options say."""
    value = params.get(name)
    if value in (None, ""):
        return default
    if not re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
        raise HTTPException(400, f"{name}: {_shown(value)} is not an integer")
    if len(value.strip().lstrip("+-")) > 19 or int(value) > LARGEST_LIMIT:
        raise HTTPException(400, f"{name}: {_shown(value.strip())} does not fit in 64 bits")
    if int(value) < 0:
        raise HTTPException(400, f"{name}: {int(value)} is below 0")
    return int(value)


def _id(text: str) -> int | None:
    """An id as written (ASCII digits), None for anything else; ids beyond the columns' range are kept: nothing has them."""
    return int(text) if re.fullmatch(r"[0-9]{1,100}", text) else None


def _png(request: Request, path) -> Response:
    """A picture the browser keeps but asks about again each time (no-cache,
    with its ETag): its URL stays when the file it shows changes, and a day's
    max-age kept the old picture after the file was ingested again. An
    unchanged picture costs a 304."""
    response = FileResponse(path, media_type="image/png", stat_result=os.stat(path),
                            headers={"Cache-Control": "private, no-cache"})
    if request.headers.get("if-none-match") == response.headers["etag"]:
        return Response(status_code=304, headers={"ETag": response.headers["etag"], "Cache-Control": "private, no-cache"})
    return response


def _path_id(request: Request, what: str = "exposure") -> int:
    """The ``{id}`` of the URL; 404 for an id nothing has, beyond the id columns' 32 bits too (PostgreSQL
    would refuse the parameter, not answer)."""
    text = request.path_params["id"]
    number = _id(text)
    if number is None or number > LARGEST_ID:
        raise HTTPException(404, f"no {what} with id {text if number is not None else _shown(text)}")
    return number


def _ids(text: str, what: str) -> list[int]:
    """``ids``: ids separated by commas or spaces, each within the id columns' 32 bits, or a 400 saying which is not."""
    ids = []
    for part in text.replace(",", " ").split():
        number = _id(part)
        if number is None:
            raise HTTPException(400, f"ids: {what} ids separated by commas")
        if number > LARGEST_ID:
            raise HTTPException(400, f"ids: {_shown(part)} is beyond every id ({LARGEST_ID} is the largest): no {what} has it")
        ids.append(number)
    return ids


async def _form(request: Request) -> dict[str, str]:
    """The fields of a form POST, decoded strictly (see :func:`_pairs`)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("", "application/x-www-form-urlencoded"):
        raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
    fields: dict[str, str] = {}
    for name, value in _pairs(await request.body(), "a form field"):
        fields.setdefault(name, value)
    return fields


def _pairs(raw: bytes, what: str) -> list[tuple[str, str]]:
    """The name=value pairs of a form body or a query string, decoded strictly:
    a name or value that is not UTF-8 or holds a NUL is a 400 naming it
    (Starlette's parser reads such a byte as U+FFFD without a word)."""
    pairs = []
    for pair in raw.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            name_text = _strict(name, f"{what}'s name")
            pairs.append((name_text, _strict(value, name_text or what)))
    return pairs


def _strict(raw: bytes, name: str, plus_is_space: bool = True) -> str:
    """Percent-encoded ``raw`` as text, or a 400 naming ``name``: no stored value holds a
    NUL (PostgreSQL refuses it with its own message where SQLite quietly finds nothing)."""
    try:
        text = unquote_to_bytes(raw.replace(b"+", b" ") if plus_is_space else raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, f"{name}: not valid UTF-8") from None
    if "\x00" in text:
        raise HTTPException(400, f"{name}: contains a NUL byte, which no stored value holds")
    return text


def _png_bytes(image) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "picture.png"
        write_png(image, target)
        return target.read_bytes()


class RefuseBadText:
    """A NUL byte or text that is not UTF-8 in the path or a query parameter is refused in one line,
    naming where, as a form's fields are (:func:`_pairs`): Starlette read a byte that is no UTF-8 as
    U+FFFD, so a search for it found nothing where ``obsarch query`` refuses it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (problem := self.problem(scope)):
            await PlainTextResponse(problem + "\n", 400)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def problem(scope) -> str | None:
        try:
            _strict(scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape"), "the path",
                    plus_is_space=False)
            _pairs(scope.get("query_string", b""), "a parameter")
        except HTTPException as exc:
            return exc.detail
        return None


def _field_names() -> list[str]:
    from archive.query import FIELDS

    return sorted(FIELDS)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if request.url.path.endswith((".png", ".csv", ".json", "/thumbnails/state")) or request.method != "GET":  # for scripts
        return PlainTextResponse(f"{exc.detail}\n", exc.status_code)
    review: Review = request.app.state.review
    return review.page(request, "error.html", exc.status_code, message=exc.detail)


async def _obsarch_error(request: Request, exc: ObsarchError) -> Response:
    """A library error reaches the page as its one line, never as a traceback."""
    return PlainTextResponse(f"{exc}\n", 404 if isinstance(exc, NotFoundError) else 400)


def create_app(
    url: str | None = None,
    *,
    catalog: Catalog | None = None,
    allow_write: bool = False,
    tokens: dict[str, str] | None = None,
    user: str | None = None,
    thumbnails: Path | None = None,
    thumbnail_workers: int = 1,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The review app over the catalog at ``url`` (or ``catalog``).

    ``tokens`` maps secrets to names (then every request needs one);
    ``allowed_hosts`` limits the Host header (against DNS rebinding).
    """
    catalog = catalog or Catalog(url)
    directory = thumbnails or default_directory(catalog.engine)
    check_directory(directory)
    policy = Policy(allow_write=allow_write, tokens=dict(tokens or {}), **({"user": user} if user else {}))
    cache = ThumbnailCache(directory, workers=thumbnail_workers)
    review = Review(catalog, policy, cache)
    routes = [
        Route("/", review.home),
        Route("/exposures", review.exposures),
        Route("/exposures.csv", review.exposures_csv),
        Route("/exposures.json", review.exposures_json),
        Route("/exposures/{id}", review.exposure),
        Route("/exposures/{id}/thumbnail.png", review.thumbnail_png),
        Route("/exposures/{id}/preview.png", review.preview_png),
        Route("/exposures/{id}/headers", review.headers),
        Route("/exposures/{id}/flags", review.post_flag, methods=["POST"]),
        Route("/flags/retract", review.retract, methods=["POST"]),
        Route("/nights", review.nights),
        Route("/nights/{night}", review.night),
        Route("/thumbnails/progress", review.progress),
        Route("/thumbnails/state", review.thumbnail_states),
        Route("/processing", review.processing),
        Route("/processing/runs/{id}", review.run),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    middleware += [Middleware(Guard, policy=policy), Middleware(RefuseBadText)]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        settle_heap()
        yield
        cache.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, ObsarchError: _obsarch_error})
    app.state.review = review
    return app

