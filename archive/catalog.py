"""The catalog from Python.

    >>> from archive.catalog import Catalog
    >>> cat = Catalog("sqlite:///obsarch.db")
    >>> df = cat.query("band == 'V' and exptime > 30")          # pandas
    >>> table = df.to_table()                                    # astropy
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from archive import db
from archive.exceptions import NotFoundError
from archive.ingest import IngestSummary, ingest, move_root
from archive.models import Exposure, File, Flag, Hdu, HeaderCard, IngestRun, Product, Root, Run
from archive.query import (
    DEFAULT_COLUMNS,
    Column,
    Compiler,
    Frames,
    Node,
    ids,
    base_select,
    column_expressions,
    header_columns,
    as_tree,
    parse_columns,
    select_exposures,
    sort_expressions,
)

if TYPE_CHECKING:
    import pandas as pd

    from archive.results import QueryResult


class Catalog:
    """An obsarch catalog at ``url`` (see :func:`archive.db.resolve_url`).

    Refuses a database without a catalog, or at another schema version,
    with the command that fixes it.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None, check: bool = True):
        self.engine = engine or db.make_engine(url)
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
        import pandas as pd

        node = as_tree(selection)
        if columns:
            text = columns if isinstance(columns, str) else ",".join(columns)
            fields = parse_columns(text)
        else:
            fields = [Column(c) for c in DEFAULT_COLUMNS] + (header_columns(node) if node else [])
        compiler = Compiler(self.dialect)
        where = compiler(node) if node is not None else None
        pairs = [pair for field in fields for pair in column_expressions(field, compiler)]
        order = sort_expressions(sort, compiler) if sort else []
        statement = base_select(*[expr.label(f"c{i}") for i, (_, expr) in enumerate(pairs)], tables=compiler.tables)
        if where is not None:
            statement = statement.where(where)
        statement = statement.order_by(*order, Exposure.id)
        if limit is not None:
            statement = statement.limit(limit)
        with self.engine.connect() as conn, db.statement_timeout(conn, timeout_s):
            rows = conn.execute(statement).all()
        from archive.results import QueryResult

        frame = pd.DataFrame([tuple(r) for r in rows], columns=[label for label, _ in pairs])
        return QueryResult(_merge_header_columns(frame))

    def to_table(self, selection: str | None = None, **options):
        """:meth:`query` as an astropy Table."""
        return self.query(selection, **options).to_table()

    def exposure_ids(self, selection: str | Node | None = None) -> list[int]:
        """Ids of the exposures matching ``selection`` (text or tree), in id order."""
        statement = select_exposures(selection, self.dialect).order_by(Exposure.id)
        with self.engine.connect() as conn:
            return list(conn.execute(statement).scalars())

    # -- one exposure --------------------------------------------------------

    def resolve(self, ref: str | int, *, by_id: bool = False) -> int:
        """The exposure id for a frame number, an exposure id or a file path."""
        with self.engine.connect() as conn:
            if by_id:
                found = conn.execute(select(Exposure.id).where(Exposure.id == int(ref))).scalars().all()
                what = f"exposure id {ref}"
            elif str(ref).isdigit():
                # a frame number names the camera's raw frame, never a product (the tree says so)
                frame = Compiler(self.dialect)(Frames(((int(ref), int(ref)),)))
                found = conn.execute(base_select(Exposure.id, Exposure.instrument, Root.path, File.relpath).where(frame)).all()
                if len(found) > 1:
                    paths = ", ".join(f"{r.path}/{r.relpath} (id {r.id}, {r.instrument or 'no instrument'})" for r in found[:5])
                    raise NotFoundError(
                        f"frame {ref} is {len(found)} exposures: {paths}; name one with --id or its path"
                    )
                found = [r.id for r in found]
                what = f"frame number {ref}"
            else:
                found = self._ids_for_path(conn, Path(ref).expanduser().absolute())
                what = f"file {ref}"
        if not found:
            raise NotFoundError(f"no exposure with {what} in the catalog")
        return found[0]

    def _ids_for_path(self, conn, path: Path) -> list[int]:
        for root_id, root_path in conn.execute(select(Root.id, Root.path)):
            root = Path(root_path)
            if root in path.parents:
                relpath = path.relative_to(root).as_posix()
                ids = conn.execute(
                    base_select(Exposure.id).where(File.root_id == root_id, File.relpath == relpath)
                ).scalars().all()
                if ids:
                    return ids
        return []

    def headers(self, exposure_id: int) -> list[dict]:
        """Every HDU of an exposure's file with its cards, as stored."""
        with self.engine.connect() as conn:
            file_id = conn.execute(select(Exposure.file_id).where(Exposure.id == exposure_id)).scalar_one()
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
        """The normalized row of one exposure, with its path."""
        result = self.query(ids([exposure_id]), columns=list(DEFAULT_COLUMNS) + [
            "telescope", "obsid", "night", "mjd", "ra", "dec", "airmass", "readout_mode", "status"])
        return result.iloc[0].to_dict()

    # -- overviews -----------------------------------------------------------

    def summary(self) -> dict[str, pd.DataFrame]:
        """Counts of raw exposures (products are counted by ``products``) per
        instrument, night, frame type and band, and of files per status."""
        import pandas as pd

        raw = Exposure.file_id.not_in(select(Product.file_id).where(Product.file_id.is_not(None)))
        result = {}
        with self.engine.connect() as conn:
            for name in ("instrument", "night", "frame_type", "band"):
                column = getattr(Exposure, name)
                rows = conn.execute(
                    select(column, func.count()).where(raw).group_by(column).order_by(column)
                ).all()
                result[name] = pd.DataFrame([tuple(r) for r in rows], columns=[name, "exposures"])
            rows = conn.execute(select(File.status, func.count()).group_by(File.status).order_by(File.status)).all()
            result["status"] = pd.DataFrame([tuple(r) for r in rows], columns=["status", "files"])
        return result

    def errors(self) -> pd.DataFrame:
        """Files with a problem now: unreadable ones, and ones ingested with
        invalid cards, with the reason."""
        import pandas as pd

        statement = (
            select((Root.path + "/" + File.relpath).label("path"), File.status, File.error)
            .join(Root, Root.id == File.root_id)
            .where(File.error.is_not(None))
            .order_by(File.status.desc(), Root.path, File.relpath)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=["path", "status", "reason"])

    def runs(self, limit: int = 20) -> pd.DataFrame:
        """The latest ingest runs with their counts."""
        import pandas as pd

        columns = ["id", "started_at", "finished_at", "state", "n_new", "n_changed", "n_unchanged", "n_missing", "n_failed", "paths"]
        statement = select(*[getattr(IngestRun, c) for c in columns]).order_by(IngestRun.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=columns)

    def nights(self, night: str | None = None) -> list[dict]:
        """Exposures per night (or of one ``night``) and band, newest night
        first, with how many carry a person's flag."""
        reviewed = (
            select(Flag.exposure_id).where(Flag.source == "person").distinct().subquery()
        )
        statement = (
            select(Exposure.night, Exposure.band, func.count().label("exposures"),
                   func.count(reviewed.c.exposure_id).label("reviewed"))
            .outerjoin(reviewed, reviewed.c.exposure_id == Exposure.id)
            .group_by(Exposure.night, Exposure.band)
            .order_by(Exposure.night.desc(), Exposure.band)
        )
        if night is not None:
            statement = statement.where(Exposure.night == night)
        with self.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(statement)]

    def move_root(self, old: str | Path, new: str | Path) -> int:
        """Point the root at ``old`` to ``new`` (see :func:`archive.ingest.move_root`)."""
        return move_root(self.engine, old, new)

    def products(self, kind: str | None = None) -> pd.DataFrame:
        """Files made by steps and wrapped tools, each once (its latest making),
        with the run that made it."""
        import pandas as pd

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
        return pd.DataFrame([tuple(r) for r in rows], columns=["id", "kind", "path", "run", "step", "made", "status"])

    def roots(self) -> pd.DataFrame:
        """The root directories and how many files each holds."""
        import pandas as pd

        statement = (
            select(Root.id, Root.path, func.count(File.id).label("files"))
            .outerjoin(File, File.root_id == Root.id)
            .group_by(Root.id, Root.path)
            .order_by(Root.path)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=["id", "path", "files"])


def _merge_header_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Join each header keyword's number and text columns into one: numbers
    where every value is numeric, text otherwise."""
    for label in [c[: -len("#num")] for c in frame.columns if c.endswith("#num")]:
        where = frame.columns.get_loc(f"{label}#num")
        numbers, texts = frame.pop(f"{label}#num"), frame.pop(f"{label}#text")
        present = texts.notna()
        if present.any() and numbers[present].notna().all():
            merged = numbers.astype(float)
        else:
            merged = texts
        frame.insert(where, label, merged)
    return frame
