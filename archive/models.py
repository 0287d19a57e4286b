"""The catalog's schema: a SQLAlchemy Core table per class.

The schema is created and changed only by the alembic migrations in
``migrations/``; ``tests/test_migrations.py`` checks that the two agree.

The classes read like SQLAlchemy's typed ORM models, but nothing is mapped:
obsarch speaks Core only (no sessions, no instances), and mapping the
classes cost a short command as much as importing SQLAlchemy itself. Each
class carries its :class:`~sqlalchemy.Table` (``Exposure.__table__``), its
columns as attributes (``Exposure.band``), and stands for its table in a
statement (``select(Hdu)``, ``insert(File)``, ``.join(Root, ...)``). As with
the ORM, a column is NOT NULL unless its annotation allows ``None``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapped  # what the attributes stand for, to a type checker

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The partial-index predicates, written as literals: a partial index is used
# only when the query repeats its predicate with the same constants.
TEXT_INDEX_LIMIT = 256
NUMERIC = "value_num IS NOT NULL"
SHORT_TEXT = f"value_num IS NULL AND length(value_text) <= {TEXT_INDEX_LIMIT}"
LONG_TEXT = f"value_num IS NULL AND length(value_text) > {TEXT_INDEX_LIMIT}"

# A card's keyword and text, ordered by their bytes on PostgreSQL too (as
# SQLite orders all text): a selection's text range or sort is collated "C"
# (query.byte_order), and an index serves only the collation it was built
# with, so ``hdr['OBSERVER'] >= 'kim'`` filtered every OBSERVER card of the
# catalog (migration 0023). Equality is the same in every deterministic
# collation, and ``like`` folds a card's case alike: cards are ASCII (the
# reader replaces other bytes), which "C" folds as every collation does.
# psycopg casts a value compared with these columns to their type, collation
# included (``%s::VARCHAR COLLATE "C"``), which BETWEEN's lower bound cannot
# take: a text range is two comparisons (query._text_between).
BYTE_ORDER = "C"
KEYWORD_TYPE = String(80).with_variant(String(80, collation=BYTE_ORDER), "postgresql")
CARD_TEXT_TYPE = Text().with_variant(Text(collation=BYTE_ORDER), "postgresql")


def postgresql_options() -> None:
    """Give the card indexes their PostgreSQL predicates (the same as
    SQLite's), and the products' path index its hash method. Called by :func:`archive.db.make_engine` for a PostgreSQL
    catalog: declaring a ``postgresql_`` option imports SQLAlchemy's
    PostgreSQL dialect, which a command on SQLite should not pay for."""
    for index in HeaderCard.__table__.indexes:
        where = index.dialect_options["sqlite"]["where"]
        if where is not None and index.dialect_options["postgresql"]["where"] is None:
            index.dialect_kwargs["postgresql_where"] = where
    for index in Product.__table__.indexes:
        index.dialect_kwargs["postgresql_using"] = "hash"


class _Column:
    """A column declared in a class body; made when the class is."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs


def mapped_column(*args: Any, **kwargs: Any) -> Any:
    """A column, declared as with SQLAlchemy's ORM (same arguments)."""
    return _Column(*args, **kwargs)


class Base:
    """A table declared as a class: ``__tablename__``, ``__table_args__``
    (constraints, then optionally a dict of table options) and one
    ``name: Mapped[type] = mapped_column(...)`` per column, in order."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    __table__: Table
    __tablename__: str

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        columns = []
        # the class's own columns, then those of its mixins (ImageNumbers), as the ORM orders them
        for owner in (cls, *(c for c in cls.__mro__[1:] if c not in (Base, object))):
            annotations = owner.__dict__.get("__annotations__", {})
            for name, spec in list(owner.__dict__.items()):
                if isinstance(spec, _Column):
                    options = dict(spec.kwargs)
                    if "nullable" not in options and not options.get("primary_key"):
                        options["nullable"] = "None" in str(annotations.get(name, "")) or "Optional" in str(annotations.get(name, ""))
                    columns.append(Column(name, *spec.args, **options))
        table_args = cls.__dict__.get("__table_args__", ())
        options = table_args[-1] if table_args and isinstance(table_args[-1], dict) else {}
        constraints = table_args[:-1] if options else table_args
        cls.__table__ = Table(cls.__tablename__, cls.metadata, *columns, *constraints, **options)
        for column in cls.__table__.columns:
            setattr(cls, column.key, column)

    @classmethod
    def __clause_element__(cls) -> Table:
        return cls.__table__


def aliased(model: type[Base], name: str | None = None) -> type[Base]:
    """``model`` over an alias of its table (the same table twice in one
    statement), as ``sqlalchemy.orm.aliased`` gives for a mapped class."""
    alias = model.__table__.alias(name)
    namespace = {column.key: column for column in alias.columns}
    namespace.update(__table__=alias, __clause_element__=staticmethod(lambda: alias))
    return type(model.__name__, (), namespace)


class Root(Base):
    """A directory an archive lives in; files are stored relative to it."""

    __tablename__ = "roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class IngestRun(Base):
    """One scan: what it was asked to do and what it found."""

    __tablename__ = "ingest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16))  # running, done, failed, interrupted
    paths: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    user: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    code_version: Mapped[str] = mapped_column(String(64))
    n_new: Mapped[int] = mapped_column(Integer, default=0)
    n_changed: Mapped[int] = mapped_column(Integer, default=0)
    n_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    n_missing: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class File(Base):
    """One row per file ever seen; a scan never deletes one."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("root_id", "relpath"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    relpath: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    header_hash: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    # present | missing | unreadable
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)
    # the run that last wrote it (new or changed): indexed for archive.promoted.refresh
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"), index=True)



class FileVersion(Base):
    """The headers a file had before it changed on disk."""

    __tablename__ = "file_versions"
    __table_args__ = (UniqueConstraint("file_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    version: Mapped[int] = mapped_column(Integer)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    header_hash: Mapped[str | None] = mapped_column(String(64))
    headers_json: Mapped[str] = mapped_column(Text)
    replaced_at: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"))


class Hdu(Base):
    """One header-data unit of a file (its data are never read at ingest)."""

    __tablename__ = "hdus"

    file_id: Mapped[int] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    hdu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    extname: Mapped[str | None] = mapped_column(Text)
    hdu_type: Mapped[str] = mapped_column(String(16))  # image, compressed, table, bintable
    shape: Mapped[str | None] = mapped_column(Text)  # numpy order, e.g. "3681x320x317"
    bitpix: Mapped[int | None] = mapped_column(BigInteger)
    ncards: Mapped[int] = mapped_column(Integer)


class HeaderCard(Base):
    """Every card of every HDU, in order; CONTINUE strings joined.

    ``value_num`` holds numbers and logicals (1/0); ``value_text`` the value as
    written (strings unquoted). ``vtype`` is one of ``s`` string, ``i`` integer,
    ``f`` float, ``b`` logical, ``c`` complex, ``u`` undefined, ``x`` a value
    that is not valid FITS, ``C`` commentary (COMMENT, HISTORY, blank keyword).
    Each card is in exactly one of three partial indexes (numbers, text up
    to 256 characters, longer text by keyword only, since PostgreSQL cannot
    index long values), so a keyword query is an index range and an insert
    pays for one index.
    """

    __tablename__ = "header_cards"
    __table_args__ = (
        ForeignKeyConstraint(
            ["file_id", "hdu_index"], ["hdus.file_id", "hdus.hdu_index"], ondelete="CASCADE"
        ),
        Index(
            "ix_header_cards_num",
            "keyword",
            "value_num",
            "file_id",
            sqlite_where=text(NUMERIC),  # postgresql_where: see postgresql_options
        ),
        Index(  # value_num too: then the index alone answers a query repeating SHORT_TEXT
            "ix_header_cards_text",
            "keyword",
            "value_text",
            "file_id",
            "value_num",
            sqlite_where=text(SHORT_TEXT),  # postgresql_where: see postgresql_options
        ),
        Index(
            "ix_header_cards_long",
            "keyword",
            "file_id",
            sqlite_where=text(LONG_TEXT),  # postgresql_where: see postgresql_options
        ),
        {"sqlite_with_rowid": False},
    )

    file_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hdu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    keyword: Mapped[str] = mapped_column(KEYWORD_TYPE)
    value_text: Mapped[str | None] = mapped_column(CARD_TEXT_TYPE)
    value_num: Mapped[float | None] = mapped_column(Float)
    vtype: Mapped[str] = mapped_column(String(1))
    comment: Mapped[str | None] = mapped_column(Text)


class Observation(Base):
    """An archive-level unit (mission + obsid) that exposures belong to."""

    __tablename__ = "observations"
    __table_args__ = (UniqueConstraint("mission", "obsid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mission: Mapped[str] = mapped_column(String(32))
    obsid: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    t_start: Mapped[datetime | None] = mapped_column(DateTime)
    t_end: Mapped[datetime | None] = mapped_column(DateTime)
    public_date: Mapped[datetime | None] = mapped_column(DateTime)
    archive: Mapped[str | None] = mapped_column(String(32))  # heasarc, eso, mast
    instrument: Mapped[str | None] = mapped_column(String(64))
    exptime: Mapped[float | None] = mapped_column(Float)
    row_json: Mapped[str | None] = mapped_column(Text)  # the archive's answer, as it came
    first_seen: Mapped[datetime | None] = mapped_column(DateTime)


class Download(Base):
    """One file to fetch for an observation: the download queue."""

    __tablename__ = "downloads"
    __table_args__ = (UniqueConstraint("url", "local_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation_id: Mapped[int | None] = mapped_column(ForeignKey("observations.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    local_path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued, downloading, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    size_expected: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(128))  # "md5:..." or "sha256:..." when the archive gives one
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class Search(Base):
    """An archive search to repeat (``obsarch sync``)."""

    __tablename__ = "searches"
    __table_args__ = (UniqueConstraint("archive", "mission", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive: Mapped[str] = mapped_column(String(32))
    mission: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text)
    params_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime)


class Exposure(Base):
    """The normalized view of one file. NULL where a value could not be
    normalized; ``sources`` (JSON) says which keyword and raw value each
    column came from. ``id`` is the id of its file (one exposure per file),
    so a card's ``file_id`` finds its exposure by primary key."""

    __tablename__ = "exposures"
    # (value, id): the ids of one value come out in id order, so PostgreSQL
    # merges them with a keyword's cards (file_id order within one value)
    # instead of hashing (migration 0014); SQLite's indexes end in the id anyway.
    __table_args__ = tuple(Index(f"ix_exposures_{name}_id", name, "id") for name in ("instrument", "obsid", "frame_type", "band", "night"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"), unique=True)
    observation_id: Mapped[int | None] = mapped_column(ForeignKey("observations.id"))
    instrument: Mapped[str | None] = mapped_column(Text)
    telescope: Mapped[str | None] = mapped_column(Text)
    obsid: Mapped[str | None] = mapped_column(Text)
    object: Mapped[str | None] = mapped_column(Text)
    frame_type: Mapped[str | None] = mapped_column(String(16))
    band: Mapped[str | None] = mapped_column(Text)
    exptime: Mapped[float | None] = mapped_column(Float)
    date_obs: Mapped[datetime | None] = mapped_column(DateTime)
    mjd: Mapped[float | None] = mapped_column(Float, index=True)
    night: Mapped[str | None] = mapped_column(String(10))
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    airmass: Mapped[float | None] = mapped_column(Float)
    readout_mode: Mapped[str | None] = mapped_column(Text)
    frame_number: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # the detector: binning, gain (e-/ADU), CCD temperature (C), its name when
    # the file holds one, the shape its detectors share ("1020x1523", numpy
    # order; NULL when they differ) and how many detectors the file has
    xbin: Mapped[int | None] = mapped_column(Integer)
    ybin: Mapped[int | None] = mapped_column(Integer)
    gain: Mapped[float | None] = mapped_column(Float)
    ccd_temp: Mapped[float | None] = mapped_column(Float)
    detector: Mapped[str | None] = mapped_column(Text)
    detector_shape: Mapped[str | None] = mapped_column(Text)
    n_detectors: Mapped[int | None] = mapped_column(Integer)
    sources: Mapped[str | None] = mapped_column(Text)


class IngestError(Base):
    """A file a scan could not read, and why (one row per run and file)."""

    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id"), index=True)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Run(Base):
    """A processing step run: what it did, with which parameters and code."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[str] = mapped_column(String(64), index=True)
    params_json: Mapped[str] = mapped_column(Text)
    params_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    user: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16))  # running, done, failed, interrupted
    error: Mapped[str | None] = mapped_column(Text)
    summary_json: Mapped[str | None] = mapped_column(Text)
    # step + parameters + code + the content of every input: a done run with
    # the same fingerprint whose products exist need not run again
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    item: Mapped[str | None] = mapped_column(Text)  # what a per-item run worked on (an obsid, a group)
    stdout: Mapped[str | None] = mapped_column(Text)
    stderr: Mapped[str | None] = mapped_column(Text)
    # A step's run over a selection is the parent of one run per item that
    # made a product (so each product's inputs are its own).
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)


class RunInput(Base):
    """What a run read, and the content it had then (so a later change shows)."""

    __tablename__ = "run_inputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"), index=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    role: Mapped[str] = mapped_column(String(32))  # e.g. frame, bias, dark, flat, offset
    content: Mapped[str | None] = mapped_column(String(128))


class Product(Base):
    """A file a run wrote; it is ingested like any other file."""

    __tablename__ = "products"
    # found by path (processing.runs.what_is_at); hash on PostgreSQL (see postgresql_options): a path may outgrow a B-tree entry
    __table_args__ = (Index("ix_products_path", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # master_bias, master_dark, master_flat, calibrated, stack, output
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # as written: the product is up to date only while the file is so (processing.runs.done_before); NULL before 0020
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)


class ImageNumbers:
    """The quality numbers of one image, shared by an exposure's summary
    (``metrics``) and each of its detectors (``detector_metrics``).

    Pixel values are in the file's data units; ``fwhm`` and the other sizes
    in pixels, ``fwhm_arcsec`` in arcseconds; NULL where the image could not
    be measured (``error`` says why).
    """

    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    mean: Mapped[float | None] = mapped_column(Float)
    median: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    background: Mapped[float | None] = mapped_column(Float)
    background_rms: Mapped[float | None] = mapped_column(Float)
    saturation_level: Mapped[float | None] = mapped_column(Float)
    saturated_fraction: Mapped[float | None] = mapped_column(Float)
    nstars: Mapped[int | None] = mapped_column(Integer)
    fwhm: Mapped[float | None] = mapped_column(Float)
    fwhm_minor: Mapped[float | None] = mapped_column(Float)
    fwhm_arcsec: Mapped[float | None] = mapped_column(Float)
    elongation: Mapped[float | None] = mapped_column(Float)
    sharpness: Mapped[float | None] = mapped_column(Float)
    pixel_scale: Mapped[float | None] = mapped_column(Float)
    repeats: Mapped[int | None] = mapped_column(Integer)  # pairs of stars showing one star twice (0: none beyond chance)


class Metric(ImageNumbers, Base):
    """Quality numbers of one exposure's image (the latest computation);
    ``error`` says why a frame could not be measured."""

    __tablename__ = "metrics"

    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    params_hash: Mapped[str] = mapped_column(String(64))
    file_version: Mapped[int] = mapped_column(Integer)
    hdu_index: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class DetectorMetric(ImageNumbers, Base):
    """Quality numbers of one detector of an exposure (the latest computation);
    ``metrics`` holds the exposure's summary, the median over its detectors."""

    __tablename__ = "detector_metrics"

    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"), primary_key=True)
    detector: Mapped[str] = mapped_column(Text, primary_key=True)
    hdu_index: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    error: Mapped[str | None] = mapped_column(Text)


class Flag(Base):
    """A quality verdict on one exposure. Every flag is kept (except one its
    author takes back with the web app's undo, within minutes of making it:
    a mis-click, not a verdict); the current one (view ``current_flags``) is
    the latest from a person, else the latest from a rule."""

    __tablename__ = "flags"
    __table_args__ = (Index("ix_flags_exposure_id_id", "exposure_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"))
    grade: Mapped[str] = mapped_column(String(16))  # great, ok, marginal, bad
    reason: Mapped[str | None] = mapped_column(String(32))  # clouds, tracking, focus, trail, saturation, manual, other
    note: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # person | rule
    rule: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    who: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))


class Group(Base):
    """A named set of exposures, made by a method (kmeans, dbscan, header
    keys, a manual list) with its parameters."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    method: Mapped[str] = mapped_column(String(32))
    params_json: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"), primary_key=True, index=True)
    role: Mapped[str | None] = mapped_column(String(32))  # "reference" or NULL


class Offset(Base):
    """The transform of an exposure onto a reference exposure:
    ``(x_ref, y_ref) = scale * R(rotation) (x, y) + (dx, dy)`` in pixels (0-based),
    rotation in degrees counter-clockwise. A failed registration has
    ``status = 'failed'`` and a reason in ``error``, never numbers."""

    __tablename__ = "offsets"
    __table_args__ = (Index("ix_offsets_exposure_id_id", "exposure_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"))
    reference_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(16))  # stars, centroid, wcs, composed
    stage: Mapped[int] = mapped_column(Integer)  # 1: onto a reference; 2: composed onto a global one
    status: Mapped[str] = mapped_column(String(16))  # ok, failed
    error: Mapped[str | None] = mapped_column(Text)
    dx: Mapped[float | None] = mapped_column(Float)
    dy: Mapped[float | None] = mapped_column(Float)
    rotation: Mapped[float | None] = mapped_column(Float)
    scale: Mapped[float | None] = mapped_column(Float)
    dx_err: Mapped[float | None] = mapped_column(Float)
    dy_err: Mapped[float | None] = mapped_column(Float)
    rotation_err: Mapped[float | None] = mapped_column(Float)
    scale_err: Mapped[float | None] = mapped_column(Float)
    nmatched: Mapped[int | None] = mapped_column(Integer)
    residual: Mapped[float | None] = mapped_column(Float)  # rms of matched stars after the fit, pixels
    chain_json: Mapped[str | None] = mapped_column(Text)  # ids of the offsets composed
    matched_json: Mapped[str | None] = mapped_column(Text)  # [[x, y, x_ref, y_ref], ...] of the stars fitted, 0-based px
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class XraySummary(Base):
    """What an X-ray file's tables say, computed from its columns for one
    version of the file (``file_version``; a changed file is summarized
    again). ``kind``: events, spectrum, response, arf, lightcurve, gti,
    image; ``role`` of a spectrum: source or background. Times are MJD (UTC),
    durations in seconds. The links are catalogued files named by BACKFILE,
    RESPFILE and ANCRFILE (NULL when absent, ``none`` or not catalogued; the
    keyword's text is kept beside). ``error`` says why numbers are missing;
    ``run_id`` is the run of the summary step that wrote the row."""

    __tablename__ = "xray_summaries"

    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    file_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    hdu_index: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[float | None] = mapped_column(Float)
    exposure_s: Mapped[float | None] = mapped_column(Float)
    rate: Mapped[float | None] = mapped_column(Float)
    net_rate: Mapped[float | None] = mapped_column(Float)
    backscal: Mapped[float | None] = mapped_column(Float)
    channels: Mapped[int | None] = mapped_column(Integer)
    n_events: Mapped[int | None] = mapped_column(BigInteger)
    gti_exposure_s: Mapped[float | None] = mapped_column(Float)
    time_span_s: Mapped[float | None] = mapped_column(Float)
    mean_rate: Mapped[float | None] = mapped_column(Float)
    frac_rms: Mapped[float | None] = mapped_column(Float)
    mjd_start: Mapped[float | None] = mapped_column(Float)
    mjd_stop: Mapped[float | None] = mapped_column(Float)
    mjd_mid: Mapped[float | None] = mapped_column(Float, index=True)
    backfile: Mapped[str | None] = mapped_column(Text)
    respfile: Mapped[str | None] = mapped_column(Text)
    ancrfile: Mapped[str | None] = mapped_column(Text)
    background_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    response_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    arf_id: Mapped[int | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    warnings: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    computed_at: Mapped[datetime] = mapped_column(DateTime)


class NamedMetric(Base):
    """A number by name for one exposure: from a wrapped tool's output
    (``run_id`` says which run, its inputs give the lineage) or from a
    person. The latest per exposure and name is the current value."""

    __tablename__ = "named_metrics"
    __table_args__ = (Index("ix_named_metrics_name_exposure_id_id", "name", "exposure_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))  # tool | person
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    who: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class RegionFile(Base):
    """A DS9 region file (text or a FITS region table) attached to an exposure."""

    __tablename__ = "region_files"
    __table_args__ = (UniqueConstraint("exposure_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))  # ds9, fits
    frame: Mapped[str | None] = mapped_column(String(32))  # sky (fk5, icrs, ...), image, physical
    n_shapes: Mapped[int] = mapped_column(Integer)  # every shape read, excluded and background ones too
    shapes: Mapped[str | None] = mapped_column(Text)  # e.g. "circle x2 (1 excluded), polygon"; "source: ...; background: ..."
    n_excluded: Mapped[int | None] = mapped_column(Integer)  # DS9 "-shape", FITS "!shape" (NULL: attached before 0016)
    n_background: Mapped[int | None] = mapped_column(Integer)  # a BKGREG table's, a DS9 "# background" shape's
    separation_deg: Mapped[float | None] = mapped_column(Float)  # nearest shape centre to the pointing (sky frames)
    position: Mapped[str | None] = mapped_column(Text)  # what the position check found, as shown
    how: Mapped[str] = mapped_column(String(16))  # attach (a person), ingest (by its name)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class PromotedKeyword(Base):
    """A header keyword whose value is also kept in a column of ``exposures``
    (``column_name``), with indexes of its own, so that a selection on it is
    one index range (see :mod:`archive.promoted`). ``kind`` is ``number``
    (numeric and logical cards) or ``text``; ``filled_run`` the last ingest
    run whose files the column holds; ``broken`` why selections read the
    cards instead, once a file holds two values of it."""

    __tablename__ = "promoted_keywords"

    keyword: Mapped[str] = mapped_column(String(128), primary_key=True)
    column_name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    filled_run: Mapped[int] = mapped_column(Integer)
    broken: Mapped[str | None] = mapped_column(Text)  # why the column no longer answers (a file with two values)
    created_at: Mapped[datetime] = mapped_column(DateTime)
