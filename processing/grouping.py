"""Groups of exposures: pointing clusters, equal header values, manual lists.

Pointing clusters work on unit vectors on the sphere, so RA = 0/360 and the
poles need no special case; DBSCAN's radius is an angle turned into the
chord length between unit vectors.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine, delete, func, insert, select

from archive.db import transaction, utcnow
from archive.exceptions import ObsarchError, UsageError
from archive.models import Exposure, Group, GroupMember
from archive.query import Column, all_of, check_fields, is_null, named, naming, parse_columns, select_exposures
from processing.runs import recorded_run

if TYPE_CHECKING:  # numpy is imported where groups are made: listing them needs none (~65 ms of each start)
    import numpy as np

ALGORITHM = "grouping-1"


@dataclass
class GroupingResult:
    groups: dict[str, list[int]] = field(default_factory=dict)  # name -> exposure ids
    without_pointing: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (files with no image, by position)
    run_id: int | None = None
    unmeasured: int = 0  # frames grouped alone because their position could not be measured (by position)


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    import numpy as np

    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def cluster_pointings(
    ra_deg: np.ndarray, dec_deg: np.ndarray, *, method: str, k: int | None = None, radius_deg: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cluster labels of sky positions: KMeans into ``k`` clusters, or DBSCAN
    joining positions within ``radius_deg`` (-1 for a position left alone)."""
    import numpy as np

    vectors = unit_vectors(np.asarray(ra_deg, float), np.asarray(dec_deg, float))
    if method == "kmeans":
        from sklearn.cluster import KMeans

        if not k or k < 1:
            raise UsageError("kmeans needs --k, the number of clusters (1 or more)")
        if k > len(vectors):
            raise ObsarchError(f"kmeans: --k {k} is more than the {len(vectors)} exposures with a pointing")
        import warnings

        with warnings.catch_warnings():  # scikit-learn warned (two lines of its source) and made fewer clusters than asked
            warnings.simplefilter("ignore")
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)
        found = len(set(labels.tolist()))
        if found < k:
            raise ObsarchError(f"kmeans: --k {k} is more than the {found} distinct pointings of the exposures")
        return labels
    if method == "dbscan":
        from sklearn.cluster import DBSCAN

        if not radius_deg or radius_deg <= 0:
            raise UsageError("dbscan needs --radius, e.g. 30arcsec or 0.5deg")
        chord = 2 * math.sin(math.radians(radius_deg) / 2)
        return DBSCAN(eps=chord, min_samples=1).fit_predict(vectors)
    raise UsageError(f"unknown pointing method {method!r}; use kmeans or dbscan")


def parse_angle(text: str) -> float:
    """``30arcsec``, ``2arcmin``, ``0.5deg`` or a number of degrees -> degrees."""
    from astropy import units as u

    try:
        quantity = u.Quantity(text)
        degrees = float(quantity.value if quantity.unit == u.dimensionless_unscaled else quantity.to_value(u.deg))
    except (TypeError, ValueError, u.UnitsError) as exc:
        raise UsageError(f"cannot read the angle {text!r}: give e.g. 30arcsec, 2arcmin or 0.5deg") from exc
    if not 0 < degrees <= 180:  # 1e999deg, -1arcsec, nan
        raise UsageError(f"the angle {text!r} is not between 0 and 180 degrees")
    return degrees


def _selected(engine: Engine, selection: str | None, *columns, products: bool = True):
    """The exposures of ``selection``; ``products=False``: raw frames only."""
    if not products:
        selection = all_of(selection, is_null("product"))
    with transaction(engine) as conn:
        return conn.execute(select_exposures(selection, engine.dialect.name, *columns).order_by(Exposure.id)).all()


GROUP_NAME_LIMIT = 128  # groups.name is String(128)

# the command that made a group, by its method: making groups again under a name replaces
# the groups that command made under it, never another command's
_KIND = {"dbscan": "pointing", "kmeans": "pointing", "header": "by", "manual": "create", "positions": "positions"}


def _store(engine: Engine, result: GroupingResult, method: str, params: dict, references: dict[str, int] | None = None,
           *, family: str | None = None) -> None:
    """Write the groups. Making groups again under a name replaces every
    group the same command made before under that name (``family``: NAME-1,
    NAME-2... of an earlier run with more clusters too); a group of the same
    name made otherwise is replaced too, and said in ``result.notes``.
    (``group create field`` deleted the groups field-1..3 of ``group pointing
    --name field``, and said nothing.)"""
    for name in result.groups:
        if not name.strip():
            raise UsageError("a group needs a name that is not blank")
        if len(name) > GROUP_NAME_LIMIT:  # PostgreSQL refused it ('value too long'), SQLite kept it
            raise UsageError(f"the group name {name[:40]!r}... is {len(name)} characters, at most {GROUP_NAME_LIMIT}: "
                             "give a shorter --name, or fewer keys")
    references = references or {}
    now = utcnow()
    params = {**params, "family": family}
    with transaction(engine, write=True) as conn:
        old, said = [], []
        rows = conn.execute(select(Group.id, Group.name, Group.method, Group.params_json,
                                   func.count(GroupMember.exposure_id).label("members"))
                            .outerjoin(GroupMember).group_by(Group.id, Group.name, Group.method, Group.params_json)).all()
        for row in rows:
            ours = family is not None and _KIND.get(row.method) == _KIND.get(method) \
                and json.loads(row.params_json or "{}").get("family") == family
            if ours or row.name in result.groups:
                old.append(row.id)
                if not ours or method == "manual":  # a group made by hand is one group: replacing it is news
                    made = "by hand" if row.method == "manual" else f"by {row.method}"
                    said.append(f"replaced group {row.name!r} ({row.members} members, made {made})")
        if old:
            conn.execute(delete(GroupMember).where(GroupMember.group_id.in_(old)))
            conn.execute(delete(Group).where(Group.id.in_(old)))
        for name, members in result.groups.items():
            group_id = conn.execute(
                insert(Group).values(name=name, method=method, params_json=json.dumps(params, sort_keys=True, default=str),
                                     run_id=result.run_id, created_at=now).returning(Group.id)
            ).scalar_one()
            conn.execute(insert(GroupMember), [
                {"group_id": group_id, "exposure_id": e, "role": "reference" if references.get(name) == e else None}
                for e in members
            ])
    result.notes.extend(said)


def group_by_pointing(
    engine: Engine, *, method: str, name: str, k: int | None = None, radius: str | None = None,
    selection: str | None = None,
) -> GroupingResult:
    """Cluster the pointings of ``selection`` into groups ``NAME-1``, ``NAME-2``...
    (numbered by right ascension of their centre)."""
    radius_deg = parse_angle(radius) if radius else None
    rows = _selected(engine, selection, Exposure.ra, Exposure.dec, products=False)  # a calibrated copy is no second pointing
    with_pointing = [r for r in rows if r.ra is not None and r.dec is not None]
    result = GroupingResult(without_pointing=[r.id for r in rows if r.ra is None or r.dec is None])
    if not with_pointing:
        raise ObsarchError("no selected exposure has a pointing (RA/Dec); nothing to cluster")
    params = {"method": method, "k": k, "radius_deg": radius_deg, "selection": selection if isinstance(selection, str) else None}
    labels = cluster_pointings([r.ra for r in with_pointing], [r.dec for r in with_pointing], method=method, k=k, radius_deg=radius_deg)
    clusters: dict[int, list] = {}
    for row, label in zip(with_pointing, labels):
        clusters.setdefault(int(label), []).append(row)
    ordered = sorted(clusters.values(), key=lambda members: _mean_ra(members))
    with recorded_run(engine, "group-pointing", params, ALGORITHM) as run:
        result.run_id = run.id
        result.groups = {f"{name}-{i}": [r.id for r in members] for i, members in enumerate(ordered, start=1)}
        _store(engine, result, method, params, family=name)
        run.summary = {"groups": len(result.groups), "without_pointing": len(result.without_pointing)}
    return result


def _mean_ra(members) -> float:
    import numpy as np

    vector = unit_vectors(np.array([m.ra for m in members]), np.array([m.dec for m in members])).sum(axis=0)
    return math.degrees(math.atan2(vector[1], vector[0])) % 360


def group_by_values(engine: Engine, keys: str, *, selection=None, prefix: str | None = None) -> GroupingResult:
    """One group per distinct combination of the named values (normalized
    columns or hdr['KEY']), named ``band=V,readout_mode=SCI1.0`` (``PREFIX:band=V``
    with a prefix, the name of the family made again next time)."""
    from archive.catalog import Catalog

    fields = parse_columns(keys, what="keys")
    with naming("keys", keys):
        check_fields(fields)
    # raw frames: a calibrated copy or a master in the group of its band counted twice
    frame = Catalog(engine=engine, check=False).query(all_of(selection, is_null("product")), columns=["id", *[_text(f) for f in fields]])
    if frame.empty:  # grouping again replaces the family: an empty answer (a typo) would have deleted it
        family = f"groups {prefix}:..." if prefix else f"groups by {keys}"
        matched = f"no exposure matches {selection!r}" if isinstance(selection, str) else "no exposure is selected"
        raise ObsarchError(f"{matched}; nothing grouped, the {family} kept as they were")
    labels = [c for c in frame.columns if c != "id"]
    result = GroupingResult()
    for values, members in frame.groupby(labels, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        shown = ",".join(f"{label}={_value(v)}" for label, v in zip(labels, values))
        name = f"{prefix}:{shown}" if prefix else shown
        if name in result.groups:  # two values written alike ('none' and no value, 1 and 1.0): one would take the other's place
            raise ObsarchError(f"two different values of {keys} make one group name, {name!r} (a value written 'none' "
                               "and no value, or 1 and 1.0); nothing grouped")
        result.groups[name] = [int(i) for i in members["id"]]
    params = {"keys": keys, "selection": selection if isinstance(selection, str) else None}
    with recorded_run(engine, "group-by", params, ALGORITHM) as run:
        result.run_id = run.id
        _store(engine, result, "header", params, family=prefix or f"by {keys}")
        run.summary = {"groups": len(result.groups)}
    return result


def _text(field_) -> str:
    return field_.name if isinstance(field_, Column) else field_.label


def _value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def create_group(engine: Engine, name: str, selection: str, *, reference: str | None = None) -> GroupingResult:
    """A group of the exposures of ``selection`` (frame numbers, ranges, any
    selection), with an optional reference member."""
    ids = [r.id for r in _selected(engine, named(selection, "group create"))]
    if not ids:
        raise ObsarchError(f"no exposure matches {selection!r}; group {name!r} not made")
    references = {}
    if reference is not None:
        (ref_id, *more) = [r.id for r in _selected(engine, reference)] or [None]
        if ref_id is None or more:
            raise ObsarchError(f"--reference {reference!r} must select exactly one exposure")
        if ref_id not in ids:
            raise ObsarchError(f"--reference {reference!r} is not in the group's selection")
        references[name] = ref_id
    result = GroupingResult(groups={name: ids})
    params = {"selection": selection, "reference": reference}
    with recorded_run(engine, "group-manual", params, ALGORITHM) as run:
        result.run_id = run.id
        _store(engine, result, "manual", params, references, family=name)
    return result


def list_groups(engine: Engine) -> list[dict]:

    with transaction(engine) as conn:
        rows = conn.execute(
            select(Group.name, Group.method, func.count(GroupMember.exposure_id).label("members"), Group.created_at)
            .outerjoin(GroupMember, GroupMember.group_id == Group.id)
            .group_by(Group.id, Group.name, Group.method, Group.created_at)
        ).all()
    return sorted((row._asdict() for row in rows), key=lambda group: natural_key(group["name"]))


def natural_key(name: str) -> tuple:
    """Names in the order people count them: ptg-2 before ptg-10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def group_members(engine: Engine, name: str) -> tuple[int, list[tuple[int, str | None]]]:
    """(group id, [(exposure id, role)]) of a group, reference first."""
    with transaction(engine) as conn:
        group_id = conn.execute(select(Group.id).where(Group.name == name)).scalar()
        if group_id is None:
            known = ", ".join(conn.execute(select(Group.name).order_by(Group.name).limit(20)).scalars()) or "none"
            raise ObsarchError(f"no group named {name!r} (groups: {known})")
        members = conn.execute(
            select(GroupMember.exposure_id, GroupMember.role).where(GroupMember.group_id == group_id)
            .order_by(GroupMember.role.is_(None), GroupMember.exposure_id)
        ).all()
    return group_id, [tuple(m) for m in members]


# -- by measured position ------------------------------------------------------------------


def parse_pixels(text: str) -> float:
    """``20px``, ``20 pix`` or ``20`` -> pixels."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(px|pix|pixels?)?\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--radius {text!r}: give a distance in pixels, e.g. 20px")
    return float(match[1])


def group_by_position(
    engine: Engine, *, radius: str, name: str, selection=None, workers: int | None = None, executor: str = "pool",
) -> GroupingResult:
    """Groups of frames at similar positions on the sky, in pixels, named
    ``NAME-1``, ``NAME-2``... in time order, each with the member nearest its
    centre as reference. Positions are the frames' current offsets when they
    all have one onto one reference; otherwise each frame is registered onto
    the one before it (stars, else a phase-correlation shift) and the shifts
    are added up, which follows a drifting night that no single reference
    reaches. A frame that cannot be registered starts a new chain."""
    import numpy as np
    from sklearn.cluster import DBSCAN

    from processing.offsets import current_offsets
    from processing.steps import resolve, without_images

    radius_px = parse_pixels(radius)
    frames = sorted(resolve(engine, selection, is_null("product")), key=lambda f: (f.mjd is None, f.mjd, f.exposure_id))
    if not frames:
        raise ObsarchError("no raw exposure matches the selection; nothing to group")
    # A file with no image (an X-ray event list or spectrum is a table) cannot be
    # registered: in the chain it would start a group of its own and cut the next
    # frame's chain too. It is left out and said (n_detectors NULL: not known, kept).
    selected = len(frames)
    frames, notes = without_images(frames)
    if not frames:
        which = "the one exposure of the selection holds no image" if selected == 1 else \
            f"none of the {selected} exposures of the selection holds an image"
        raise ObsarchError(f"{which} (X-ray event lists "
                           "and spectra are tables); nothing to group by position")
    unmeasured = 0
    current = current_offsets(engine, [f.exposure_id for f in frames])
    references = {c.reference_id for c in current.values() if c.ok}
    if len(references) == 1 and all(current.get(f.exposure_id) and current[f.exposure_id].ok for f in frames):
        positions = {f.exposure_id: (-current[f.exposure_id].transform.dx, -current[f.exposure_id].transform.dy) for f in frames}
        how = "current offsets"
    else:
        positions, unlinked = _chained_positions(engine, frames, workers, executor)
        how = "frame-to-frame registration"
        if unlinked:
            first, why = unlinked[0]
            notes.append(f"{len(unlinked)} of {len(frames) - 1} frames could not be registered onto the frame before "
                         f"them, so each starts a group of its own, its position not measured ({first}: {why})")
            unmeasured = len(unlinked)
    ids = list(positions)
    labels = DBSCAN(eps=radius_px, min_samples=1).fit_predict(np.array([positions[i] for i in ids]))
    clusters: dict[int, list[int]] = {}
    for exposure_id, label in zip(ids, labels):
        clusters.setdefault(int(label), []).append(exposure_id)
    order = {f.exposure_id: i for i, f in enumerate(frames)}
    ordered = sorted(clusters.values(), key=lambda members: min(order[m] for m in members))
    result = GroupingResult(groups={f"{name}-{i}": members for i, members in enumerate(ordered, start=1)}, notes=notes,
                            unmeasured=unmeasured if how != "current offsets" else 0)
    chosen = {group: _central(members, positions) for group, members in result.groups.items()}
    params = {"radius_px": radius_px, "positions": how, "selection": selection if isinstance(selection, str) else None}
    with recorded_run(engine, "group-positions", params, ALGORITHM) as run:
        result.run_id = run.id
        _store(engine, result, "positions", params, chosen, family=name)
        run.summary = {"groups": len(result.groups), "positions": how}
    return result


def _central(members: list[int], positions: dict[int, tuple[float, float]]) -> int:
    import numpy as np

    xy = np.array([positions[m] for m in members])
    return members[int(np.argmin(np.hypot(*(xy - xy.mean(axis=0)).T)))]


def _chained_positions(engine: Engine, frames, workers, executor) -> tuple[dict[int, tuple[float, float]], list[tuple[str, str]]]:
    """Each frame registered onto the one before it, in workers; positions are
    the running sums of the shifts (a frame that cannot be registered starts
    again far from the others, so it is grouped alone). Returns them, and the
    frames that could not be registered with why."""
    from processing.executor import parallel_map
    from processing.offsets import MatchParams, chain_step

    tasks = [(frames[i].path, frames[i - 1].path, MatchParams()) for i in range(1, len(frames))]
    shifts = dict(parallel_map(chain_step, tasks, workers=workers, executor=executor))
    positions, x, y, unlinked = {frames[0].exposure_id: (0.0, 0.0)}, 0.0, 0.0, []
    for i in range(1, len(frames)):
        shift = shifts[i - 1]
        if isinstance(shift, str):
            x, y = x + 1e6, y  # no link to the chain so far
            unlinked.append((frames[i].path, shift))
        else:
            x, y = x - shift[0], y - shift[1]
        positions[frames[i].exposure_id] = (x, y)
    return positions, unlinked


def groups_of(engine: Engine, exposure_id: int) -> list[dict]:
    """The groups an exposure is a member of, with its role and the group's size."""

    size = (select(GroupMember.group_id, func.count().label("members")).group_by(GroupMember.group_id).subquery())
    with transaction(engine) as conn:
        rows = conn.execute(
            select(Group.id, Group.name, Group.method, GroupMember.role, size.c.members, Group.created_at)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .join(size, size.c.group_id == Group.id)
            .where(GroupMember.exposure_id == exposure_id)
        ).all()
    return sorted((row._asdict() for row in rows), key=lambda group: natural_key(group["name"]))
