"""X-ray summaries in the catalog: which files to summarize, storing them
per file version, and the links BACKFILE / RESPFILE / ANCRFILE make.

Storage (a design decision): one row per file in ``xray_summaries`` with
the file version it describes, rather than rows of ``metrics`` (whose
columns are image statistics of one exposure) or name/value rows (which
would need a pivot for every selection). A changed file is summarized
again; a summary of another version than the file's current one is never
shown (the selection names check the version).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, and_, delete, exists, func, or_, select, text, update

from archive.db import insert_ignoring_conflicts, rows_in, transaction, utcnow
from archive.models import SHORT_TEXT, File, Hdu, HeaderCard, Root, XraySummary
from archive.roots import file_ids_at
from archive.xray_kinds import XRAY_CLASSES, XRAY_EXTNAMES, spectrum_role
from processing.machinery import (
    Input,
    Item,
    ItemFailed,
    Step,
    StepResult,
    Writer,
    run_step,
)
from processing.runs import file_content

# Cards that make a file worth opening (XRAY_CLASSES, XRAY_EXTNAMES): one indexed
# query finds them, so a scan of optical frames pays nothing per file.
LINKS = (("backfile", "background_id"), ("respfile", "response_id"), ("ancrfile", "arf_id"))


@dataclass
class XrayStepSummary:
    """What a summary step did: the step's result, with the warnings (data
    problems that did not stop a summary, links that name nothing)."""

    result: StepResult
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def summarized(self) -> list[str]:
        return self.result.done

    @property
    def skipped(self) -> int:
        return len(self.result.skipped)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.result.failed


def candidate_files(conn, *, run_id: int | None = None, file_ids: list[int] | None = None) -> dict[int, tuple]:
    """{file id: (path, version, content)} of present files whose headers
    say X-ray (HDUCLAS1 or EXTNAME), limited to one ingest run or to ``file_ids``."""
    # the predicate of the partial text index, repeated so that this is a range of it
    by_class = select(HeaderCard.file_id).where(
        HeaderCard.keyword == "HDUCLAS1", text(SHORT_TEXT), HeaderCard.value_text.in_(XRAY_CLASSES)
    )
    # ESO's data products classify their HDUs too (MUSE: HDUCLASS 'ESO', HDUCLAS1 'IMAGE'):
    # such a file is no X-ray file, and would be read again at every run for no summary
    eso = select(HeaderCard.file_id).where(HeaderCard.keyword == "HDUCLASS", text(SHORT_TEXT), HeaderCard.value_text == "ESO")
    # by primary key (file_id, hdu_index): a few rows per file, no scan of every HDU
    by_name = exists().where(Hdu.file_id == File.id, Hdu.extname.in_(XRAY_EXTNAMES))
    scope = [File.status == "present"]  # the cheap conditions first: the X-ray tests run on what they leave
    if run_id is not None:
        scope.append(File.run_id == run_id)
    if file_ids is not None:
        scope.append(File.id.in_(file_ids))
    statement = (
        select(File.id, (Root.path + "/" + File.relpath).label("path"), File.version, File.header_hash, File.size,
               File.mtime_ns)
        .join(Root, Root.id == File.root_id)
        .where(*scope, or_(and_(File.id.in_(by_class), File.id.not_in(eso)), by_name))
    )
    return {row.id: (row.path, row.version, file_content(row)) for row in conn.execute(statement)}


def _summary_row(task):
    """The worker's part (processing.xray, which needs astropy and numpy: an
    ingest that read no X-ray file does not import them)."""
    from processing.xray import summary_row

    return summary_row(task)


class XraySummaries(Step):
    """The X-ray summary step: each X-ray file's tables summarized in a
    worker, stored for its current version, with the step's run."""

    name = "xray-summaries"
    work = staticmethod(_summary_row)

    @property
    def algorithm(self) -> str:
        from processing.xray import ALGORITHM

        return ALGORITHM

    def __init__(self, run_id: int | None = None, file_ids: list[int] | None = None):
        self.run_id, self.file_ids = run_id, file_ids
        self.warnings: list[tuple[int, str, str]] = []
        self.written: set[int] = set()

    def items(self, engine: Engine) -> list[Item]:
        with transaction(engine) as conn:
            candidates = candidate_files(conn, run_id=self.run_id, file_ids=self.file_ids)
        return [Item(path, (file_id, path), [Input(file_id, "file", content)], data=(file_id, version))
                for file_id, (path, version, content) in sorted(candidates.items())]

    def up_to_date(self, engine: Engine, items: list[Item], prints: dict[str, str]) -> set[str]:
        """A file whose summary describes its current version, made by this
        algorithm, is done (the numbers depend on the file and the code, not
        on the run that made them): a summary of an older algorithm (a kind
        told wrong, say) is made again by the next `obsarch xray summarize`."""
        if not items:
            return set()  # and processing.xray (astropy, numpy) stays unimported: an ingest of frames reads no X-ray file
        from archive.models import Run

        current = f" {self.algorithm}"
        with transaction(engine) as conn:
            stored = {fid: version for fid, version, code in conn.execute(
                select(XraySummary.file_id, XraySummary.file_version, Run.code_version)
                .outerjoin(Run, Run.id == XraySummary.run_id)) if code is not None and code.endswith(current)}
        return {item.key for item in items if stored.get(item.data[0]) == item.data[1]}

    def write(self, out: Writer, item: Item, row: dict | None) -> None:
        file_id, version = item.data
        self.written.add(file_id)
        out.conn.execute(delete(XraySummary).where(XraySummary.file_id == file_id))
        if row is None:
            return  # its headers named X-ray extensions, its tables are none of the kinds
        # a concurrent scan may have stored the same file's summary first: the same numbers
        out.conn.execute(insert_ignoring_conflicts(out.conn, XraySummary.__table__, ["file_id"]),
                         [{**row, "file_id": file_id, "file_version": version, "run_id": out.run_id, "computed_at": utcnow()}])
        if row["warnings"]:
            self.warnings.append((file_id, item.key, row["warnings"]))
        if row["error"]:
            raise ItemFailed(row["error"])  # the row stays: the reason, and no number


def summarize(
    engine: Engine, *, run_id: int | None = None, file_ids: list[int] | None = None, force: bool = False,
    workers: int | None = None, executor: str = "pool", progress=None,
) -> XrayStepSummary:
    """Summarize the X-ray files of an ingest run (or ``file_ids``, or all)
    whose summary is missing or of an older version, on the step machinery;
    then make the links."""
    step = XraySummaries(run_id, file_ids)
    result = run_step(engine, step, force=force, executor=executor, workers=workers, progress=progress)
    summary = XrayStepSummary(result, [(path, message) for _, path, message in step.warnings])
    if step.written:  # new summaries can make or complete links; none: nothing to link anew
        summary.warnings.extend(relink(engine, told=step.written))
    return summary


def relink(engine: Engine, told: set[int] = frozenset(), only: set[int] | None = None) -> list[tuple[str, str]]:
    """Link the spectra again (``only`` these; default every one, see
    :func:`link_all`) and return the link warnings (path, message): every
    one of the spectra in ``told``, and of the others each link they lost
    (a background gone missing, unreadable or replaced by a file of another
    kind takes the spectrum's net rate with it, and says so)."""
    with transaction(engine, write=True) as conn:
        warnings = link_all(conn, only)
    said = []
    for file_id, path, message, keyword, lost in warnings:
        if file_id in told:
            said.append((path, message))
        elif lost:  # a link the spectrum had, gone
            said.append((path, f"{message}: its net rate is left empty" if keyword == "backfile" else message))
    return said


def relink_broken(engine: Engine) -> list[tuple[str, str]]:
    """Link again the spectra (present ones) linked to a file that no longer
    is (gone missing, or unreadable since): those links go, and with a
    background the net rate; returns what each lost, as :func:`relink`.
    A background whose source spectra are gone takes its own role again.
    Two queries when nothing is broken, whatever the number of spectra."""
    target, own = File.__table__.alias("target"), File.__table__.alias("own")
    linked = or_(*(target.c.id == getattr(XraySummary, column) for _, column in LINKS))
    with transaction(engine) as conn:
        broken = set(conn.execute(
            select(XraySummary.file_id).join(target, linked).join(own, own.c.id == XraySummary.file_id)
            .where(XraySummary.kind == "spectrum", target.c.status != "present", own.c.status == "present")).scalars())
        orphaned = set(conn.execute(
            select(XraySummary.background_id).join(own, own.c.id == XraySummary.file_id)
            .where(XraySummary.kind == "spectrum", XraySummary.background_id.is_not(None), own.c.status != "present")).scalars())
    if orphaned:  # named by a spectrum gone missing: a background only while a present one names it
        with transaction(engine, write=True) as conn:
            _settle_roles(conn, orphaned)
    return relink(engine, only=broken) if broken else []


def _spectra(conn, only: set[int] | None, *columns) -> list:
    """``columns`` of the spectra's summaries (``only`` these file ids, in
    batches; default all)."""
    return rows_in(conn, select(*columns).where(XraySummary.kind == "spectrum"), XraySummary.file_id, only)


def _statuses(conn, file_ids) -> dict[int, str]:
    return dict(rows_in(conn, select(File.id, File.status), File.id, file_ids))


# -- links -------------------------------------------------------------------------


_EXTENSION_SPEC = re.compile(r"(\[[^\]]*\]|\{[^}]*\})+$")


def link_target(directory: str, value: str | None) -> str | None:
    """The absolute path a BACKFILE/RESPFILE/ANCRFILE value names, relative
    to the file's directory; None for absent or ``none``. An extension or
    row spec (``file.pha[2]``, ``file.pha{3}``) is dropped."""
    if value is None or value.strip().lower() in ("", "none", "null"):
        return None
    name = _EXTENSION_SPEC.sub("", value.strip())
    return os.path.normpath(os.path.join(directory, os.path.expandvars(name)))


def _paths_of(conn, file_ids: list[int]) -> dict[int, str]:
    rows = rows_in(conn, select(File.id, Root.path, File.relpath).join(Root, Root.id == File.root_id), File.id, file_ids)
    return {file_id: os.path.normpath(os.path.join(root, relpath)) for file_id, root, relpath in rows}


def link_all(conn, only: set[int] | None = None) -> list[tuple[int, str, str, str, bool]]:
    """Resolve the spectra's links (``only`` these file ids; default every
    spectrum) to catalogued files present and of the kind each link names,
    mark spectra named by a BACKFILE as backgrounds, and compute net rates;
    a row is written only where its links or net rate change. Returns
    warnings (file id, path, message, link keyword, whether the spectrum
    had that link before) for links that name no such file, of the spectra
    that are themselves present."""
    spectra = _spectra(conn, only, XraySummary)
    by_id = _paths_of(conn, [row.file_id for row in spectra])
    targets = {row.file_id: {keyword: link_target(os.path.dirname(by_id[row.file_id]), getattr(row, keyword))
                             for keyword, _ in LINKS} for row in spectra if row.file_id in by_id}
    catalogued = file_ids_at(conn, {t for found in targets.values() for t in found.values() if t})
    status = _statuses(conn, [*catalogued.values(), *by_id])
    paths = {path: file_id for path, file_id in catalogued.items() if status[file_id] == "present"}
    kinds = _kinds_of(conn, list(set(paths.values())))
    parts = _summarized_parts(conn, set(paths.values()))
    warnings, links, backgrounds = [], {}, set()
    for row in spectra:
        path = by_id.get(row.file_id)
        if path is None:
            continue
        values = {}
        for keyword, column in LINKS:
            target = targets[row.file_id][keyword]
            values[column] = paths.get(target) if target else None
            message = _link_problem(keyword, getattr(row, keyword), target, values[column], status.get(catalogued.get(target)))
            if message is None and kinds.get(values[column]) != LINK_KINDS[keyword]:
                message = _wrong_kind(keyword, getattr(row, keyword), kinds.get(values[column]))
                values[column] = None
            if message is None and values[column] is not None:
                message = _another_part(keyword, getattr(row, keyword), parts.get(values[column]))
                if message:
                    values[column] = None
            if message and status.get(row.file_id) == "present":
                warnings.append((row.file_id, path, message, keyword, getattr(row, column) is not None and values[column] is None))
        if values["background_id"] == row.file_id:  # its own background would make it one, with a net rate of 0
            values["background_id"] = None
            warnings.append((row.file_id, path, SELF_BACKGROUND, "backfile", False))
        links[row.file_id] = values
        if values["background_id"]:
            backgrounds.add(values["background_id"])
    needed = set(links) | {values["background_id"] for values in links.values() if values["background_id"]}
    areas = areascal(conn, needed)
    numbers = {r.file_id: {**r._mapping, "areascal": areas.get(r.file_id, 1.0)}
               for r in _spectra(conn, needed, XraySummary.file_id, XraySummary.counts, XraySummary.exposure_s, XraySummary.backscal)}
    from processing.xray import net_rate, own_rate

    stored = {row.file_id: row for row in spectra}
    net_already = {file_id for file_id, card in _class2(conn, set(links)).items() if card == "NET"}
    for file_id, values in links.items():
        background = values["background_id"]
        if file_id in net_already:  # OGIP's NET: the background is taken off already; once more would be twice
            net = own_rate(numbers[file_id])
            if background is not None and status.get(file_id) == "present":
                warnings.append((file_id, by_id[file_id], NET_ALREADY, "backfile", False))
        else:
            net = net_rate(numbers[file_id], numbers[background]) if background in numbers else None
        row = stored[file_id]
        if any(getattr(row, column) != value for column, value in values.items()) or row.net_rate != net:
            conn.execute(update(XraySummary).where(XraySummary.file_id == file_id).values(**values, net_rate=net))
    was = {row.file_id for row in spectra if row.role == "background" or row.background_id is not None}
    roles = _settle_roles(conn, set(links) | backgrounds | was | {row.background_id for row in spectra if row.background_id})
    # a background (named by a BACKFILE, or by its own HDUCLAS2 or name) has no links of a source's to warn of
    return [warning for warning in warnings if roles.get(warning[0]) != "background"]


def _named_backgrounds(conn) -> set[int]:
    """The spectra a present spectrum's BACKFILE links."""
    own = File.__table__.alias("own")
    return set(conn.execute(select(XraySummary.background_id).join(own, own.c.id == XraySummary.file_id)
                            .where(XraySummary.kind == "spectrum", XraySummary.background_id.is_not(None),
                                   own.c.status == "present").distinct()).scalars())


def _settle_roles(conn, file_ids: set[int]) -> dict[int, str]:
    """The role of each of these spectra as a fresh catalog would give it,
    stored and returned: a background when a present spectrum's BACKFILE
    names it, else a source when it links a background itself, else its own
    (HDUCLAS2, its name: :func:`archive.xray_kinds.spectrum_role`). A role a
    link gave goes with the link (it stayed until ``xray summarize --force``)."""
    if not file_ids:
        return {}
    named = _named_backgrounds(conn)
    cards = _class2(conn, file_ids)
    rows = rows_in(conn, select(XraySummary.file_id, XraySummary.role, XraySummary.background_id, File.relpath)
                   .join(File, File.id == XraySummary.file_id).where(XraySummary.kind == "spectrum"),
                   XraySummary.file_id, file_ids)
    roles = {}
    for file_id, role, background_id, relpath in rows:
        roles[file_id] = ("background" if file_id in named else "source" if background_id is not None
                          else spectrum_role(cards.get(file_id, ""), os.path.basename(relpath)))
        if roles[file_id] != role:
            conn.execute(update(XraySummary).where(XraySummary.file_id == file_id).values(role=roles[file_id]))
    return roles


SELF_BACKGROUND = "BACKFILE names the file itself: no background linked"
NET_ALREADY = "HDUCLAS2 is NET, its background taken off already: its net rate is its rate, BACKFILE's not taken off again"


def _class2(conn, file_ids: set[int]) -> dict[int, str]:
    """HDUCLAS2 of the HDU each spectrum's summary is of, upper case (absent: left out)."""
    statement = (select(XraySummary.file_id, func.upper(func.trim(HeaderCard.value_text)))
                 .join(HeaderCard, and_(HeaderCard.file_id == XraySummary.file_id, HeaderCard.hdu_index == XraySummary.hdu_index))
                 .where(HeaderCard.keyword == "HDUCLAS2"))
    return {file_id: card or "" for file_id, card in rows_in(conn, statement, XraySummary.file_id, file_ids)}


def areascal(conn, only: set[int] | None = None) -> dict[int, float | None]:
    """AREASCAL of each spectrum's table (``only`` these file ids; default
    all), from its stored cards: the keyword's
    number, None where it is no positive number or a column (the summary's
    warnings say which), absent from the dict where the table has neither
    (OGIP: 1)."""
    name = func.upper(func.trim(HeaderCard.value_text))
    cards = (
        select(HeaderCard.file_id, HeaderCard.keyword, HeaderCard.value_num)
        .join(XraySummary, and_(XraySummary.file_id == HeaderCard.file_id, XraySummary.hdu_index == HeaderCard.hdu_index))
        .where(XraySummary.kind == "spectrum",
               or_(HeaderCard.keyword == "AREASCAL", and_(HeaderCard.keyword.like("TTYPE%"), name == "AREASCAL")))
    )
    rows = rows_in(conn, cards, HeaderCard.file_id, only)
    found: dict[int, float | None] = {}
    for file_id, keyword, number in rows:
        usable = keyword == "AREASCAL" and number is not None and math.isfinite(number) and number > 0
        found[file_id] = number if usable and found.get(file_id, number) is not None else None
    return found


def _summarized_parts(conn, file_ids: set[int]) -> dict[int, tuple[int | None, str | None, int]]:
    """(HDU index, EXTNAME, EXTVER: 1 when absent) of the HDU each file's summary is of."""
    extver = (select(HeaderCard.value_num).where(HeaderCard.file_id == XraySummary.file_id, HeaderCard.hdu_index == XraySummary.hdu_index,
                                                 HeaderCard.keyword == "EXTVER").limit(1).scalar_subquery())
    statement = (select(XraySummary.file_id, XraySummary.hdu_index, Hdu.extname, extver)
                 .outerjoin(Hdu, and_(Hdu.file_id == XraySummary.file_id, Hdu.hdu_index == XraySummary.hdu_index)))
    return {file_id: (index, extname, 1 if version is None else int(version))
            for file_id, index, extname, version in rows_in(conn, statement, XraySummary.file_id, file_ids)}


def _another_part(keyword: str, value: str, part: tuple[int | None, str | None, int] | None) -> str | None:
    """Why a link whose value names a part of its file (``pair.pha[2]``,
    ``[BKG]``, a row ``{3}``) is not linked: the part is not the HDU the
    file's summary is of (its counts would be another spectrum's: a net rate
    of -4.0 c/s for 0.99); None when it names none, or that one."""
    spec = _EXTENSION_SPEC.search(value.strip())
    if spec is None or part is None:
        return None
    index, extname, extver = part
    first = re.match(r"\[\s*([^\],]*?)\s*(?:,\s*(\d+)\s*)?\]$", spec.group(0))
    named, version = (first.group(1), int(first.group(2) or 1)) if first else (None, None)
    if named is not None and (named == str(index) and first.group(2) is None
                              or extname and named.upper() == extname.strip().upper() and version == extver):
        return None
    what = f"HDU {named}" if named and named.isdigit() else f"{spec.group(0)}"
    return (f"{keyword.upper()} {value!r} names {what} of the file; obsarch summarizes its HDU {index}"
            f"{f' ({extname})' if extname else ''} only: not linked")


def _link_problem(keyword: str, value: str | None, target: str | None, file_id: int | None,
                  status: str | None = None) -> str | None:
    """Why a link names no file to link (``status``: that of the catalogued
    file at the target, if any); None when it names one."""
    name = keyword.upper()
    if value is None:
        return f"{name} absent: no {_WHAT[keyword]} linked"
    if target is None:
        return f"{name} is {value!r}: no {_WHAT[keyword]} linked"
    if file_id is None:
        if status == "unreadable":
            return f"{name} {value!r}: unreadable (obsarch errors says why)"
        where = "no such file" if not Path(target).exists() else "not in the catalog (ingest it)"
        return f"{name} {value!r}: {where}"
    return None


_WHAT = {"backfile": "background", "respfile": "response", "ancrfile": "ARF"}
# The kind of file each link must name (archive.xray_kinds): a BACKFILE naming an
# event list, say, would be taken for a background spectrum and give a net rate.
LINK_KINDS = {"backfile": "spectrum", "respfile": "response", "ancrfile": "arf"}
_KIND_NAMES = {"spectrum": "a spectrum", "response": "a response (RMF)", "arf": "an ARF", "events": "an event list",
               "lightcurve": "a light curve", "image": "an image", "region": "a region file", "gti": "a GTI file"}


def _wrong_kind(keyword: str, value: str, kind: str | None) -> str:
    found = _KIND_NAMES.get(kind, "no X-ray file obsarch has summarized") if kind else "no X-ray file obsarch has summarized"
    return f"{keyword.upper()} {value!r} is {found}, not {_KIND_NAMES[LINK_KINDS[keyword]]}: no {_WHAT[keyword]} linked"


def _kinds_of(conn, file_ids: list[int]) -> dict[int, str | None]:
    """The summarized kind of each file (of its current version); a file
    not summarized, or summarized as no kind, is absent."""
    statement = select(XraySummary.file_id, XraySummary.kind).join(
        File, and_(File.id == XraySummary.file_id, File.version == XraySummary.file_version))
    return dict(rows_in(conn, statement, XraySummary.file_id, file_ids))


def linked_files(conn, file_id: int) -> list[tuple[str, int]]:
    """(role, file id) of the background, response and ARF a file links to."""
    row = conn.execute(select(XraySummary.background_id, XraySummary.response_id, XraySummary.arf_id)
                       .where(XraySummary.file_id == file_id)).first()
    if row is None:
        return []
    return [(role, fid) for role, fid in zip(("background", "response", "arf"), row) if fid is not None]




# -- the spectra report ----------------------------------------------------------------

SPECTRA_COLUMNS = ("obsid", "instrument", "object", "xray_role", "mjd_mid", "counts", "rate", "net_rate", "exposure_ks",
                   "background_file", "response", "arf", "path")


def parse_duration_s(text: str) -> float:
    """``5ks``, ``5 ks``, ``5000s``, ``5000`` -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ks|s)?\s*", text or "")
    if not match:
        raise ValueError(f"{text!r} is not a duration: give a number with s or ks, e.g. 5ks or 5000s")
    seconds = float(match.group(1)) * (1000.0 if match.group(2) == "ks" else 1.0)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite duration")
    return seconds


def spectra_report(engine: Engine, selection: str | None = None, min_exposure_s: float | None = None):
    """One row per spectrum of ``selection`` (exposure at least
    ``min_exposure_s``), sorted by mid-time: a pandas DataFrame."""
    import pandas as pd

    from archive.query import (
        BoolOp,
        Column,
        Compare,
        Compiler,
        base_select,
        column_expressions,
        parse,
    )

    conditions = [Compare(Column("xray_kind"), "==", "spectrum")]
    if selection and selection.strip():
        conditions.append(parse(selection))
    if min_exposure_s is not None:
        conditions.append(Compare(Column("exposure"), ">=", float(min_exposure_s)))
    compiler = Compiler(engine.dialect.name)
    where = compiler(BoolOp("and", tuple(conditions)))
    pairs = [pair for name in SPECTRA_COLUMNS for pair in column_expressions(Column(name), compiler)]
    statement = base_select(*[e.label(f"c{i}") for i, (_, e) in enumerate(pairs)], tables={"files", "roots"}).where(where)
    mid = column_expressions(Column("mjd_mid"), compiler)[0][1]
    from archive.models import Exposure

    statement = statement.order_by(mid.is_(None), mid, Exposure.id)
    with transaction(engine) as conn:
        rows = [tuple(r) for r in conn.execute(statement)]
    frame = pd.DataFrame(rows, columns=[label for label, _ in pairs])
    # background_file as in `obsarch query`: `background` is the image-background metric of quality
    return frame.rename(columns={"xray_role": "role"})


def summary_notes(engine: Engine, file_id: int) -> list[tuple[str, str]]:
    """The warnings and error of a file's summary, and the link keywords
    that name nothing catalogued, as (label, text)."""
    with transaction(engine) as conn:
        row = conn.execute(select(XraySummary.__table__).where(XraySummary.file_id == file_id)).first()
        if row is None:
            return []
        notes = [("warning", w) for w in (row.warnings or "").split("; ") if w]
        if row.error:
            notes.append(("not summarized", row.error))
        path = _paths_of(conn, [file_id]).get(file_id)
        for keyword, column in LINKS if row.kind == "spectrum" else ():
            value = getattr(row, keyword)
            if value and getattr(row, column) is None:
                itself = path is not None and link_target(os.path.dirname(path), value) == path
                notes.append((keyword.upper(), f"{value} ({'names the file itself: ' if itself else ''}not linked)"))
    return notes


def values_of(engine: Engine, exposure_id: int, names: tuple[str, ...]) -> dict:
    """The selection names ``names`` of one exposure (None where unset)."""
    from archive.models import Exposure
    from archive.query import Column, Compiler, base_select, column_expressions

    compiler = Compiler(engine.dialect.name)
    pairs = [pair for name in names for pair in column_expressions(Column(name), compiler)]
    statement = base_select(*[e.label(f"c{i}") for i, (_, e) in enumerate(pairs)], tables=compiler.tables)
    with transaction(engine) as conn:
        row = conn.execute(statement.where(Exposure.id == exposure_id)).first()
    return {} if row is None else {label: value for (label, _), value in zip(pairs, row)}
