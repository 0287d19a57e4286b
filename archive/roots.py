"""Where a path lives in the catalog: its root and its path relative to it.

The one home of the rule "a path belongs to the deepest root that holds it".
Only the roots table is read (a handful of rows), never the files table, so
finding one file or the files below a directory costs an indexed lookup
whatever the size of the catalog.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, or_, select

from archive.models import File, Root

FILES, ROOTS = File.__table__, Root.__table__  # not the classes: see archive.ingest


def root_of(conn: Connection, path: str | Path) -> tuple[int, Path, str] | None:
    """(root id, root path, relative path in POSIX form) of the deepest root
    holding ``path`` (an absolute path), or None when no root holds it."""
    return _deepest(_roots(conn), Path(path))


def _roots(conn: Connection) -> list[tuple[int, Path]]:
    return [(root_id, Path(root_path)) for root_id, root_path in conn.execute(select(ROOTS.c.id, ROOTS.c.path))]


def _deepest(roots: list[tuple[int, Path]], path: Path) -> tuple[int, Path, str] | None:
    best = None
    for root_id, root in roots:
        if (path == root or root in path.parents) and (best is None or len(root.parts) > len(best[1].parts)):
            best = (root_id, root)
    if best is None:
        return None
    relpath = "" if path == best[1] else path.relative_to(best[1]).as_posix()
    return best[0], best[1], relpath


def file_ids_at(conn: Connection, paths, *, status: str | None = None) -> dict[str, int]:
    """{path: file id} of the catalogued files at ``paths`` (absolute, as
    given), optionally only those of one ``status``; the roots table is read
    once, the files table in batches."""
    roots = _roots(conn)
    wanted: dict[int, dict[str, str]] = {}
    for path in paths:
        found = _deepest(roots, Path(path))
        if found is not None and found[2]:
            wanted.setdefault(found[0], {})[found[2]] = path
    ids = {}
    for root_id, by_relpath in wanted.items():
        relpaths = list(by_relpath)
        for start in range(0, len(relpaths), 500):
            statement = select(FILES.c.id, FILES.c.relpath).where(FILES.c.root_id == root_id, FILES.c.relpath.in_(relpaths[start:start + 500]))
            if status is not None:
                statement = statement.where(FILES.c.status == status)
            ids.update({by_relpath[relpath]: file_id for file_id, relpath in conn.execute(statement)})
    return ids


def file_id_of(conn: Connection, path: str | Path) -> int | None:
    """The id of the catalogued file at ``path`` (absolute), or None."""
    found = root_of(conn, path)
    if found is None or not found[2]:
        return None
    return conn.execute(select(FILES.c.id).where(FILES.c.root_id == found[0], FILES.c.relpath == found[2])).scalar()


def files_below(conn: Connection, directory: str | Path) -> list[int]:
    """Ids of the catalogued files in ``directory`` (absolute) and below it,
    whether the directory lies inside a root or holds whole roots."""
    directory = Path(directory)
    conditions = []
    found = root_of(conn, directory)
    if found is not None:
        root_id, _, prefix = found
        inside = FILES.c.relpath.startswith(prefix + "/", autoescape=True) if prefix else True
        conditions.append((FILES.c.root_id == root_id) & inside)
    for root_id, root_path in conn.execute(select(ROOTS.c.id, ROOTS.c.path)):
        if directory in Path(root_path).parents:
            conditions.append(FILES.c.root_id == root_id)
    if not conditions:
        return []
    return list(conn.execute(select(FILES.c.id).where(or_(*conditions)).order_by(FILES.c.id)).scalars())
