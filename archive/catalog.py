"""The catalog from Python.

    >>> from archive.catalog import Catalog
    >>> cat = Catalog("sqlite:///obsarch.db")
    >>> df = cat.query("band == 'V' and exptime > 30")          # pandas
    >>> table = df.to_table()                                    # astropy
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, case, func, select

from archive import db
from archive.exceptions import NotFoundError
from archive.models import Exposure, File, Flag, Hdu, HeaderCard, IngestRun, Metric, Offset, Product, Root, Run, RunInput
from archive.roots import file_id_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd

    from archive.ingest import IngestSummary
    from archive.query import Node
    from archive.results import QueryResult


SHOWN_PATHS = 5  # the exposures an error names; more are counted, with the command that lists them


LARGEST_LIMIT = 2**63 - 1  # a LIMIT is a 64-bit integer on both backends
RUN_COLUMNS = ("run", "step", "item", "state", "started_at", "seconds", "summary", "error", "parent")  # of Catalog.runs


def _frame(table: tuple[list[str], list[tuple]]) -> pd.DataFrame:
    """(column names, rows) as a DataFrame, each column of the rows' type (:func:`archive.results.frame_of`)."""
    from archive.results import frame_of

    names, rows = table
    return frame_of(rows, names)


def first_rows(fetch, limit: int | None) -> tuple:
    """(the first ``limit`` rows, whether more exist), of ``fetch(n)``, which
    reads at most ``n`` rows (a list or a DataFrame; every row when None):
    it is asked for one row past the limit, so that a list cut at its limit
    says so without counting every row."""
    if limit is None:
        return fetch(None), False
    rows = fetch(min(limit, LARGEST_LIMIT - 1) + 1)
    if len(rows) <= limit:
        return rows, False
    return (rows.iloc[:limit] if hasattr(rows, "iloc") else rows[:limit]), True


def _shared_frame(ref, found) -> str:
    """Why a frame number names no one exposure: the ones it names, the
    first few with their path, id and instrument, and how many more."""
    paths = ", ".join(f"{r.path}/{r.relpath} (id {r.id}, {r.instrument or 'no instrument'})" for r in found[:SHOWN_PATHS])
    more = f", and {len(found) - SHOWN_PATHS} more (obsarch query {ref} lists them all)" if len(found) > SHOWN_PATHS else ""
    return f"frame {ref} is {len(found)} exposures: {paths}{more}; name one with --id or its path"


class Catalog:
    """An obsarch catalog at ``url`` (see :func:`archive.db.resolve_url`).

    Refuses a database without a catalog, or at another schema version,
    with the command that fixes it.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None, check: bool = True):
        self.engine = engine or db.make_engine(url)
        self._statements: dict = {}  # (tree, columns, sort, limit) -> (labels, SELECT), see rows()
        if check:
            db.check_schema(self.engine)

    @classmethod
    def create(cls, url: str | None = None) -> Catalog:
        """Create (or upgrade) the catalog at ``url`` and open it."""
        engine = db.make_engine(url)
        db.upgrade(engine)
        return cls(engine=engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ingest(self, paths, **options) -> IngestSummary:
        """Scan directories or files into the catalog (see :func:`archive.ingest.ingest`)."""
        from archive.ingest import ingest

        return ingest(self.engine, list(paths), **options)

    # -- selecting -----------------------------------------------------------

    def query(
        self,
        selection: str | Node | None = None,
        columns: str | list[str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> QueryResult:
        """Exposures matching ``selection``, one row each.

        Parameters
        ----------
        selection : str or a query tree, optional
            An expression of the selection language (people write text;
            programs pass a tree of :mod:`archive.query` nodes); all
            exposures if empty.
        columns : str or list of str, optional
            Names or ``hdr['KEY']``; by default the usual columns plus every
            header keyword the selection mentions.
        sort : str, optional
            Comma-separated names, ``-`` before one for descending order.
        limit : int, optional
            At most this many rows.
        timeout_s : float, optional
            Seconds after which the server cancels the query (QueryTimeout).
        """
        from archive.results import QueryResult, frame_of

        names, rows = self.rows(selection, columns=columns, sort=sort, limit=limit, timeout_s=timeout_s)
        return QueryResult(frame_of(rows, names))

    def rows(
        self,
        selection: str | None = None,
        columns: str | list[str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> tuple[list[str], list[tuple]]:
        """:meth:`query` as column names and plain rows, without pandas (a
        command that prints a few rows should not pay for importing it)."""
        from archive.query import as_tree

        node = as_tree(selection)
        text = None if not columns else columns if isinstance(columns, str) else ",".join(columns)
        key = (repr(node), text, sort, limit)  # repr: 1, 1.0 and True are equal keys but not equal SQL
        with self.engine.connect() as conn, db.statement_timeout(conn, timeout_s):
            self._serial_merge(conn, node)
            try:
                labels, statement = self._statements[key]
            except KeyError:
                labels, statement = self._statement(conn, node, text, sort, limit, selection)
                if len(self._statements) >= 256:
                    self._statements.clear()
                self._statements[key] = labels, statement
            rows = [tuple(r) for r in conn.execute(statement)]
        return _merge_header_columns(labels, rows)

    def _statement(self, conn, node: Node | None, columns: str | None, sort: str | None, limit: int | None, selection=None):
        """(labels, SELECT) of :meth:`rows`. Building it costs more than running it on
        a night's rows, so the same question (a page asked again) reuses it, with the
        shape chosen when it was first asked (every shape gives the same rows)."""
        from archive.query import (
            DEFAULT_COLUMNS,
            FIELDS,
            Column,
            Compiler,
            base_select,
            column_expressions,
            header_columns,
            naming,
            parse_columns,
            sort_expressions,
        )

        if columns and columns.strip() == "all":  # every name a row has one value of (group, say, has many)
            # the usual columns first: a terminal table leaves out from the right what does not fit
            rest = [name for name, definition in FIELDS.items() if definition.kind != "set" and name not in DEFAULT_COLUMNS]
            columns = ",".join([*DEFAULT_COLUMNS, *rest])
        if columns:
            fields = parse_columns(columns)
        else:
            fields = [Column(c) for c in DEFAULT_COLUMNS] + (header_columns(node) if node else [])
        compiler = Compiler(self.dialect, conn)  # conn: SQLite picks a keyword test's shape from two capped counts
        with naming("selection", selection):  # the text the tree came from, if any
            where = compiler.root(node) if node is not None else None
        with naming("columns", columns):
            pairs = [pair for field in fields for pair in column_expressions(field, compiler)]
        order = sort_expressions(sort, compiler) if sort else []
        statement = base_select(*[expr.label(f"c{i}") for i, (_, expr) in enumerate(pairs)], tables=compiler.tables)
        if where is not None:
            statement = statement.where(where)
        statement = statement.order_by(*order, Exposure.id)
        if limit is not None:
            statement = statement.limit(limit)
        return [label for label, _ in pairs], statement

    def _serial_merge(self, conn, node: Node | None) -> None:
        """On PostgreSQL, no parallel workers for this transaction when the
        selection merges two id-ordered ranges (see :func:`archive.query.merges_sorted_ranges`)."""
        from archive.query import merges_sorted_ranges

        if self.dialect == "postgresql" and merges_sorted_ranges(node):
            conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")

    def hints(self, selection: str | Node | None, columns: str | None = None, empty: Iterable[str] = ()) -> list[str]:
        """Values the selection asks for that the catalog does not hold,
        each with the nearest it does (see :func:`archive.query.value_hints`):
        for saying why a selection matched nothing; and of the header
        keywords of ``columns`` (as :meth:`rows` takes them) whose column
        label is in ``empty``, each that no file has, with the one it
        resembles: for saying why a column came out empty."""
        from archive.query import Header, as_tree, keyword_hints, parse_columns, value_hints

        asked = set(empty)
        headers = [field for field in parse_columns(columns) if isinstance(field, Header) and field.label in asked] \
            if asked and columns and columns.strip() != "all" else []
        with db.transaction(self.engine) as conn:
            return (value_hints(conn, as_tree(selection)) if selection else []) + keyword_hints(conn, headers)

    def to_table(self, selection: str | None = None, **options):
        """:meth:`query` as an astropy Table."""
        return self.query(selection, **options).to_table()

    def exposure_ids(self, selection: str | Node | None = None) -> list[int]:
        """Ids of the exposures matching ``selection`` (text or tree), in id order."""
        from archive.query import as_tree, ids_statement

        node = as_tree(selection)
        with self.engine.connect() as conn:
            self._serial_merge(conn, node)
            result = conn.execute(ids_statement(node, self.dialect, conn))
            # Plain integers straight from the driver's cursor: a Row per id
            # cost more than the query itself for 66,000 ids (benchmarks/ingest.py).
            return [row[0] for row in result.cursor.fetchall()]

    # -- one exposure --------------------------------------------------------

    def resolve(self, ref: str | int, *, by_id: bool = False) -> int:
        """The exposure id for a frame number, an exposure id or a file path."""
        from archive.query import Compiler, Frames, base_select, int_param

        if (by_id or str(ref).isdigit()) and int(ref) >= 2**63:  # beyond any id or frame number a catalog holds
            raise NotFoundError(f"no exposure with {'exposure id' if by_id else 'frame number'} {ref} in the catalog")
        with self.engine.connect() as conn:
            if by_id:
                found = conn.execute(select(Exposure.id).where(Exposure.id == int_param(int(ref)))).scalars().all()
                what = f"exposure id {ref}"
            elif str(ref).isdigit():
                # a frame number names the camera's raw frame, never a product (the tree says so)
                frame = Compiler(self.dialect)(Frames(((int(ref), int(ref)),)))
                found = conn.execute(base_select(Exposure.id, Exposure.instrument, Root.path, File.relpath)
                                     .where(frame).order_by(Exposure.id)).all()
                if len(found) > 1:
                    raise NotFoundError(_shared_frame(ref, found))
                found = [r.id for r in found]
                what = f"frame number {ref}"
            else:
                path = Path(ref).expanduser().absolute()  # its directory as ingest stores it: links followed, `..` gone
                file_id = file_id_of(conn, path.parent.resolve() / path.name)
                found = list(conn.execute(select(Exposure.id).where(Exposure.file_id == file_id)).scalars())
                what = f"file {ref}"
        if not found:
            raise NotFoundError(f"no exposure with {what} in the catalog")
        return found[0]

    def headers(self, exposure_id: int) -> list[dict]:
        """Every HDU of an exposure's file with its cards, as stored."""
        with self.engine.connect() as conn:
            file_id = conn.execute(select(Exposure.file_id).where(Exposure.id == exposure_id)).scalar()
            if file_id is None:
                raise NotFoundError(f"no exposure with exposure id {exposure_id} in the catalog")
            hdus = conn.execute(select(Hdu).where(Hdu.file_id == file_id).order_by(Hdu.hdu_index)).all()
            cards = conn.execute(
                select(HeaderCard.hdu_index, HeaderCard.keyword, HeaderCard.value_text, HeaderCard.vtype, HeaderCard.comment)
                .where(HeaderCard.file_id == file_id)
                .order_by(HeaderCard.hdu_index, HeaderCard.position)
            ).all()
        by_hdu: dict[int, list] = {}
        for hdu_index, keyword, text, vtype, comment in cards:
            by_hdu.setdefault(hdu_index, []).append((keyword, text, vtype, comment))
        return [
            {"index": h.hdu_index, "extname": h.extname, "type": h.hdu_type, "shape": h.shape,
             "bitpix": h.bitpix, "cards": by_hdu.get(h.hdu_index, [])}
            for h in hdus
        ]

    def exposure(self, exposure_id: int) -> dict:
        """The normalized row of one exposure, with its path, and
        ``sources``: which card each value came from, or why it is empty."""
        from archive.query import DEFAULT_COLUMNS, ids

        names, rows = self.rows(ids([exposure_id]), columns=list(DEFAULT_COLUMNS) + [
            "telescope", "obsid", "night", "mjd", "ra", "dec", "airmass", "readout_mode",
            "xbin", "ybin", "gain", "ccd_temp", "detector", "n_detectors", "status"])
        if not rows:
            raise NotFoundError(f"no exposure with exposure id {exposure_id} in the catalog")
        with self.engine.connect() as conn:
            sources = conn.execute(select(Exposure.sources).where(Exposure.id == exposure_id)).scalar()
        return {**dict(zip(names, rows[0])), "sources": json.loads(sources or "{}")}

    # -- overviews -----------------------------------------------------------

    def summary(self) -> dict[str, pd.DataFrame]:
        """Counts of raw exposures (products are counted by ``products``) per
        instrument, night, frame type and band, and of files per status."""
        return {name: _frame(table) for name, table in self.summary_rows().items()}

    def summary_rows(self) -> dict[str, tuple[list[str], list[tuple]]]:
        """:meth:`summary` as (column names, rows) per table, without pandas."""
        from archive.query import is_raw_frame

        raw = is_raw_frame()
        result = {}
        with self.engine.connect() as conn:
            for name in ("instrument", "night", "frame_type", "band"):
                column = getattr(Exposure, name)
                rows = conn.execute(
                    # empty values last on both backends (SQLite put them first, PostgreSQL last)
                    select(column, func.count()).where(raw).group_by(column).order_by(column.asc().nulls_last())
                ).all()
                result[name] = [name, "exposures"], [tuple(row) for row in rows]
            rows = conn.execute(select(File.status, func.count()).group_by(File.status).order_by(File.status)).all()
            result["status"] = ["status", "files"], [tuple(row) for row in rows]
        return result

    def errors(self) -> pd.DataFrame:
        """Files with a problem now: unreadable ones, and ones ingested with
        invalid cards, with the reason."""
        return _frame(self.error_rows())

    def error_rows(self) -> tuple[list[str], list[tuple]]:
        """:meth:`errors` as (column names, rows), without pandas."""
        statement = (
            select((Root.path + "/" + File.relpath).label("path"), File.status, File.error)
            .join(Root, Root.id == File.root_id)
            .where(File.error.is_not(None))
            .order_by(File.status.desc(), Root.path, File.relpath)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        # a file gone since: its reason is of its last reading, not why it is gone
        rows = [(path, status, f"gone from disk; when last read: {why}" if status == "missing" else why)
                for path, status, why in rows]
        return ["path", "status", "reason"], rows

    def runs(self, limit: int = 20) -> pd.DataFrame:
        """The latest runs of every kind, newest first: ingests (ids ``i1``,
        ``i2``...) and processing steps (``1``, ``2``...), with what each did."""
        return _frame(self.run_rows(limit))

    def run_rows(self, limit: int = 20) -> tuple[list[str], list[tuple]]:
        """:meth:`runs` as (column names, rows), without pandas."""
        with self.engine.connect() as conn:
            rows = [(*row[:8], None) for row in _ingest_rows(conn, limit)]  # without who and where
            steps = conn.execute(select(Run).order_by(Run.id.desc()).limit(limit)).all()
        rows += [(str(r.id), r.step, r.item, r.state, r.started_at, _seconds(r), _summary_text(r.summary_json), r.error,
                  None if r.parent_id is None else str(r.parent_id)) for r in steps]
        rows.sort(key=lambda row: row[4], reverse=True)
        return list(RUN_COLUMNS), rows[:limit]

    def ingests(self, limit: int | None = 20) -> list[dict]:
        """The latest ingest runs, newest first, as :meth:`runs` lists them
        (``item`` holds the paths scanned), with who ran each where."""
        with self.engine.connect() as conn:
            rows = _ingest_rows(conn, limit)
        names = ("run", "step", "item", "state", "started_at", "seconds", "summary", "error", "user", "host")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def run(self, ref: str) -> dict:
        """One run: ``i3`` is ingest run 3, ``3`` processing run 3. A dict of
        its fields, ``inputs``, ``products`` and ``items`` (per-item state:
        the exposures it measured, registered or flagged, or the files an
        ingest could not read), and an external tool's ``stdout``/``stderr``."""
        text = str(ref).strip()
        if not text.lstrip("i").isdigit():
            raise NotFoundError(f"{ref!r} is no run id: give a number from `obsarch runs` (i3 for ingest run 3)")
        number = int(text.lstrip("i"))
        if number >= 2**31:  # beyond any run id (PostgreSQL would refuse the parameter)
            raise NotFoundError(f"no ingest run i{number} in the catalog" if text.startswith("i")
                                else f"no run {number} in the catalog (ingest runs are i1, i2...)")
        with self.engine.connect() as conn:
            if text.startswith("i"):
                return self._ingest_run(conn, number)
            return self._step_run(conn, number)

    def _ingest_run(self, conn, run_id: int) -> dict:
        run = conn.execute(select(IngestRun).where(IngestRun.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no ingest run i{run_id} in the catalog")
        failed = conn.execute(
            select((Root.path + "/" + File.relpath).label("path"), File.status, File.error)
            .join(Root, Root.id == File.root_id)
            .where(File.run_id == run_id, File.error.is_not(None))
            .order_by(Root.path, File.relpath)
        ).all()
        fields = {"run": f"i{run.id}", "step": "ingest", "paths": run.paths, "state": run.state,
                  "started_at": run.started_at, "finished_at": run.finished_at, "host": run.host, "user": run.user,
                  "code_version": run.code_version, "summary": _ingest_counts(run), "error": run.error}
        return {**fields, "params": {}, "inputs": [], "products": [],
                "items": [_item(r.path, None, r.status, r.error) for r in failed]}

    def _step_run(self, conn, run_id: int) -> dict:
        import json

        run = conn.execute(select(Run).where(Run.id == run_id)).first()
        if run is None:
            raise NotFoundError(f"no run {run_id} in the catalog (ingest runs are i1, i2...)")
        path = (Root.path + "/" + File.relpath).label("path")
        inputs = conn.execute(
            select(RunInput.role, path, Exposure.frame_number)
            .join(File, File.id == RunInput.file_id).join(Root, Root.id == File.root_id)
            .outerjoin(Exposure, Exposure.file_id == File.id)
            .where(RunInput.run_id == run_id).order_by(RunInput.id)
        ).all()
        products = conn.execute(select(Product.kind, Product.path).where(Product.run_id == run_id).order_by(Product.id)).all()
        fields = {"run": str(run.id), "parent": run.parent_id, "step": run.step, "item": run.item, "state": run.state,
                  "started_at": run.started_at,
                  "finished_at": run.finished_at, "host": run.host, "user": run.user, "code_version": run.code_version,
                  "summary": json.loads(run.summary_json or "{}"), "error": run.error}
        return {**fields, "params": json.loads(run.params_json or "{}"),
                "inputs": [{"role": r.role, "path": r.path, "frame_number": r.frame_number} for r in inputs],
                "products": [{"kind": r.kind, "path": r.path} for r in products],
                "items": self._items(conn, run_id), "stdout": run.stdout, "stderr": run.stderr}

    def _items(self, conn, run_id: int) -> list[dict]:
        """What a step did to each item: the runs it made per item (a tool's
        run per obsid, a product's run), and each exposure it measured
        (metrics), registered (offsets) or flagged, with the reason of a failure."""
        children = conn.execute(select(Run.id, Run.item, Run.state, Run.error).where(Run.parent_id == run_id).order_by(Run.id)).all()
        items = [_item(r.item, None, r.state, r.error, r.id) for r in children]
        path = (Root.path + "/" + File.relpath).label("path")
        for table, state in ((Metric, case((Metric.error.is_(None), "measured"), else_="failed")),
                             (Offset, Offset.status), (Flag, Flag.grade)):
            error = Flag.reason if table is Flag else table.error
            rows = conn.execute(
                select(Exposure.frame_number, path, state.label("state"), error.label("error"))
                .select_from(table).join(Exposure, Exposure.id == table.exposure_id)
                .join(File, File.id == Exposure.file_id).join(Root, Root.id == File.root_id)
                .where(table.run_id == run_id).order_by(Exposure.id)
            ).all()
            items += [_item(r.path, r.frame_number, r.state, r.error) for r in rows]
        return items

    def nights(self, night: str | None = None) -> list[dict]:
        """Raw frames per night (or of one ``night``) and band, newest night
        first, with how many carry a person's flag: the frames
        :meth:`summary` counts (products are not a night's frames)."""
        from archive.query import is_raw_frame

        reviewed = (
            select(Flag.exposure_id).where(Flag.source == "person").distinct().subquery()
        )
        statement = (
            select(Exposure.night, Exposure.band, func.count().label("exposures"),
                   func.count(reviewed.c.exposure_id).label("reviewed"))
            .outerjoin(reviewed, reviewed.c.exposure_id == Exposure.id)
            .where(is_raw_frame())
            .group_by(Exposure.night, Exposure.band)
            .order_by(Exposure.night.desc().nulls_last(), Exposure.band.asc().nulls_last())  # as summary: empty last
        )
        if night is not None:
            statement = statement.where(Exposure.night == night)
        with self.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(statement)]

    def move_root(self, old: str | Path, new: str | Path) -> int:
        """Point the root at ``old`` to ``new`` (see :func:`archive.ingest.move_root`)."""
        from archive.ingest import move_root

        return move_root(self.engine, old, new)

    def products(self, kind: str | None = None) -> pd.DataFrame:
        """Files made by steps and wrapped tools, each once (its latest making),
        with the run that made it."""
        return _frame(self.product_rows(kind))

    def product_rows(self, kind: str | None = None) -> tuple[list[str], list[tuple]]:
        """:meth:`products` as (column names, rows), without pandas."""
        latest = select(func.max(Product.id)).group_by(Product.path)
        statement = (
            select(Product.id, Product.kind, Product.path, Product.run_id, Run.step, Run.finished_at, File.status)
            .join(Run, Run.id == Product.run_id)
            .outerjoin(File, File.id == Product.file_id)
            .where(Product.id.in_(latest))
            .order_by(Product.id)
        )
        if kind:
            statement = statement.where(Product.kind == kind)
        with db.transaction(self.engine) as conn:
            rows = conn.execute(statement).all()
        return ["id", "kind", "path", "run", "step", "made", "status"], [tuple(row) for row in rows]

    def roots(self) -> pd.DataFrame:
        """The root directories and how many files each holds."""
        return _frame(self.root_rows())

    def root_rows(self) -> tuple[list[str], list[tuple]]:
        """:meth:`roots` as (column names, rows), without pandas."""
        statement = (
            select(Root.id, Root.path, func.count(File.id).label("files"))
            .outerjoin(File, File.root_id == Root.id)
            .group_by(Root.id, Root.path)
            .order_by(Root.path)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return ["id", "path", "files"], [tuple(row) for row in rows]


def _item(item, frame_number, state, error, run_id=None) -> dict:
    """One item of a run, the same keys for every kind."""
    return {"item": item, "frame_number": frame_number, "state": state, "error": error, "run": run_id}


def _seconds(run) -> float | None:
    if run.started_at is None or run.finished_at is None:
        return None
    return round((run.finished_at - run.started_at).total_seconds(), 3)


def _ingest_rows(conn, limit: int | None) -> list[tuple]:
    """(run, step, paths, state, started_at, seconds, counts, error, user, host) of the latest ingests."""
    statement = select(IngestRun).order_by(IngestRun.id.desc())
    return [(f"i{r.id}", "ingest", r.paths, r.state, r.started_at, _seconds(r), _ingest_counts(r), r.error, r.user, r.host)
            for r in conn.execute(statement if limit is None else statement.limit(limit))]


def _ingest_counts(run) -> str:
    return (f"{run.n_new} new, {run.n_changed} changed, {run.n_unchanged} unchanged, "
            f"{run.n_missing} missing, {run.n_failed} failed")


def _summary_text(summary_json: str | None) -> str:
    """A step's summary as one line, ``key=value`` separated by commas; long
    values are left to ``obsarch runs show``."""
    import json

    summary = json.loads(summary_json) if summary_json else {}
    values = {k: len(v) if isinstance(v, (list, dict)) else v for k, v in summary.items()}
    return ", ".join(f"{k}={v}" for k, v in values.items() if len(str(v)) <= 60)


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def _merge_header_columns(names: list[str], rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    """Join each header keyword's number and text columns into one: numbers
    where every value is numeric, text otherwise."""
    if not any(name.endswith("#num") for name in names):
        return names, rows
    keep, merged = [], []
    for i, name in enumerate(names):
        if name.endswith("#text"):
            continue
        if not name.endswith("#num"):
            keep.append(name)
            merged.append(lambda row, i=i: row[i])
            continue
        label, j = name[: -len("#num")], names.index(name[: -len("#num")] + "#text")
        numeric = all(row[i] is not None for row in rows if row[j] is not None)
        # integers where every card wrote one (TELHUM = 05 is 5, not 5.0)
        whole = numeric and all(_INTEGER.fullmatch(row[j]) for row in rows if row[j] is not None)
        if numeric and not whole and any(abs(row[i]) >= 2**53 and _INTEGER.fullmatch(row[j]) for row in rows if row[j] is not None):
            numeric = False  # beside a float, an integer a double cannot hold (a Gaia source id) is shown as written
        keep.append(label)
        if whole:  # from the digits: a double rounds an integer beyond 2**53 (a Gaia source id)
            merged.append(lambda row, j=j: None if row[j] is None else int(row[j]))
        elif numeric and all(row[j].strip() in ("T", "F") for row in rows if row[j] is not None):
            merged.append(lambda row, i=i: None if row[i] is None else bool(row[i]))  # logicals as written: T, F
        else:
            merged.append((lambda row, i=i: None if row[i] is None else float(row[i])) if numeric else (lambda row, j=j: row[j]))
    return keep, [tuple(get(row) for get in merged) for row in rows]
