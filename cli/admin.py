"""Administration: init, demo, the schema (db), the roots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.formats import typed_rows
from cli.app import STATE, FormatOption, command, db_app, fail, open_catalog, roots_app
from cli.render import Format, console, err_console, exposures_shown, show_rows


@command(panel="admin")
def init() -> None:
    """Create the catalog at the current schema (./obsarch.db unless --db).

    A team's catalog: `obsarch --db postgresql://HOST/DBNAME init`.

    Example: obsarch init
    """
    from archive import db

    engine = db.make_engine(STATE.db)
    db.upgrade(engine)
    console.print(f"catalog ready at {engine.url.render_as_string(hide_password=True)} (schema {db.head_revision(engine)})")


@command(panel="admin")
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the frames and the catalog.")] = Path("obsarch-demo"),
) -> None:
    """Write the night the README's tour uses (B, V, R frames of one field at two
    pointings, bias, darks, flats, two XMM obsids with spectra, two source lists), ingest it into
    DIRECTORY/obsarch.db (or the catalog --db or $OBSARCH_DB names, which the tour's commands
    then use too) and query it; then `cd DIRECTORY` and follow the tour.

    Example: obsarch demo obsarch-demo
    """
    import os

    from sqlalchemy import func, inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from archive.catalog import Catalog
    from archive.db import ENV_VAR, cannot, make_engine
    from archive.exceptions import ObsarchError
    from archive.formats import counted
    from archive.models import File
    from cli.demo import make_night

    if directory.is_dir() and any(directory.iterdir()):  # a second night on the first: every frame number twice
        raise ObsarchError(f"{directory}: not empty (a demo made before?); the demo writes a fresh night: "
                           "remove the directory or name another")
    named = STATE.db or os.environ.get(ENV_VAR)
    if named:  # a catalog of its own, unless it holds files; looked at before it is created or upgraded
        engine = make_engine(named)
        try:
            with engine.connect() as conn:
                held = conn.execute(select(func.count()).select_from(File)).scalar() if inspect(conn).has_table("files") else 0
            where = engine.url.render_as_string(hide_password=True)
        except SQLAlchemyError as exc:
            raise cannot(engine, "open", exc) from exc
        finally:
            engine.dispose()
        if held:
            raise ObsarchError(f"{where}: the catalog already holds {counted(held, 'file')}; the demo's tour needs one of "
                               f"its own: unset ${ENV_VAR} or pass --db sqlite:///{(directory / 'obsarch.db').resolve()}")
    directory.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.create(named or f"sqlite:///{(directory / 'obsarch.db').resolve()}")
    paths = make_night(directory)
    summary = catalog.ingest([directory / "ngc3293", directory / "xmm"])
    console.print(f"wrote {len(paths)} files to {directory}; ingested: {summary.new} new", soft_wrap=True, markup=False)
    from cli.xray import after_ingest

    after_ingest(catalog.engine, summary)  # as `obsarch ingest` does: the tour's X-ray lines need the summaries
    selection = "band == 'V' and frame_type == 'science'"
    # the command as it is shown, --limit and the note of more rows included: it is run as printed
    console.print(f"\n$ obsarch query \"{selection}\" --columns frame_number,band,exptime,date_obs,relpath --limit 5",
                  markup=False, soft_wrap=True)
    names, rows = catalog.rows(selection, columns="frame_number,band,exptime,date_obs,relpath", limit=6)
    show_rows(names, rows[:5])
    console.print(exposures_shown(len(rows[:5]), 5, len(rows) > 5), markup=False)
    console.print(f"\nnext: cd {directory} and follow the tour in the README (obsarch summary, obsarch quality compute ...)",
                  soft_wrap=True, markup=False)


@command(roots_app, "list")
def roots_list(fmt: FormatOption = Format.table) -> None:
    """The root directories and how many files each holds.

    Example: obsarch roots list
    """
    names, rows = open_catalog().root_rows()
    show_rows(names, typed_rows(rows, names), fmt)


@command(roots_app, "move")
def roots_move(
    old: Annotated[str, typer.Argument(help="The root's old path.")],
    new: Annotated[Path, typer.Argument(help="Where the tree is now.")],
) -> None:
    """Tell the catalog a tree has moved; nothing is re-read.

    Example: obsarch roots move ngc3293 /mnt/big/ngc3293
    """
    count = open_catalog().move_root(old, new)
    console.print(f"root moved: {old} -> {new.resolve()} ({count} files)")


@command(db_app, "upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Bring the catalog's schema to this obsarch's version (creates it if empty).

    Example: obsarch db upgrade
    """
    from archive import db

    engine = db.make_engine(STATE.db)
    before = db.current_revision(engine)
    db.upgrade(engine, revision)
    after = db.current_revision(engine)
    console.print(f"schema {after}: already up to date" if after == before else f"schema {before or '(none)'} -> {after}")


@command(db_app, "current")
def db_current() -> None:
    """The catalog's schema revision and the one this obsarch needs.

    Example: obsarch db current
    """
    from archive import db

    engine = db.make_engine(STATE.db)
    current, head = db.current_revision(engine), db.head_revision(engine)
    state = ("up to date" if current == head else "run `obsarch db upgrade`" if current is None or current in db.known_revisions()
             else "unknown to this obsarch: a later obsarch made it, or it is not an obsarch catalog")
    console.print(f"catalog: {current or '(none)'}  obsarch: {head}  ({state})")


@command(db_app, "history")
def db_history() -> None:
    """The schema migrations this obsarch carries.

    Example: obsarch db history
    """
    from alembic.script import ScriptDirectory

    from archive import db

    engine = db.make_engine(STATE.db)
    scripts = ScriptDirectory.from_config(db.alembic_config(engine))
    for script in scripts.walk_revisions():
        console.print(f"{script.revision}  {' '.join(script.doc.split())}", markup=False)  # a title of two lines: one


@command(db_app, "promote")
def db_promote(
    keywords: Annotated[Optional[list[str]], typer.Argument(help="Header keywords, e.g. OBSERVER CCD-TEMP.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="number or text (default: the kind most of its cards have).")] = None,
    show: Annotated[bool, typer.Option("--list", help="List the promoted keywords.")] = False,
) -> None:
    """Keep header keywords in indexed columns of the exposures as well as in
    the cards, so that selections pairing them with band, night, frame_type,
    instrument or obsid are one index range (a large catalog's hot keywords).

    Refused for a keyword a file holds two values of; an ingest that brings
    such a file leaves the column unused and says so. `obsarch db demote
    KEYWORD` drops it. --list says which columns selections use (state).

    Example: obsarch db promote EXPTIME FILTER
    """
    from archive import promoted
    from archive.exceptions import ObsarchError

    if show and keywords:
        fail(f"--list lists the promoted keywords: give it no keyword ({' '.join(keywords)})", code=2)
    if kind is not None and not keywords:
        fail("--kind is the kind of the keywords to promote: name them", code=2)
    catalog = open_catalog()
    if show or not keywords:
        rows = [(p.keyword, p.column, p.kind, p.exposures, p.state) for p in promoted.listing(catalog.engine)]
        if not rows:
            console.print("no keyword is promoted: selections read every keyword from the cards")
        show_rows(["keyword", "column", "kind", "exposures", "state"], rows)
        return
    failed = 0
    for keyword in keywords:
        start = time.perf_counter()
        try:
            p = promoted.promote(catalog.engine, keyword, kind)
        except ObsarchError as exc:
            failed += 1
            err_console.print(f"error: {exc}", soft_wrap=True, markup=False)
            continue
        console.print(f"promoted {p.keyword} ({p.kind}) to exposures.{p.column}: {p.exposures} exposures hold a value, "
                      f"{len(promoted.PARTNERS) + 1} indexes ({time.perf_counter() - start:.1f} s)", markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1 if failed == len(keywords) else 3)


@command(db_app, "demote")
def db_demote(keywords: Annotated[list[str], typer.Argument(help="Promoted header keywords.")]) -> None:
    """Drop promoted keywords' columns; selections read them from the cards again.

    Example: obsarch db demote FILTER
    """
    from archive import promoted
    from archive.exceptions import ObsarchError

    catalog = open_catalog()
    failed = 0
    for keyword in keywords:
        try:
            p = promoted.demote(catalog.engine, keyword)
        except ObsarchError as exc:
            failed += 1
            err_console.print(f"error: {exc}", soft_wrap=True, markup=False)
            continue
        console.print(f"demoted {p.keyword}: exposures.{p.column} dropped", markup=False)
    if failed:
        raise typer.Exit(1 if failed == len(keywords) else 3)
