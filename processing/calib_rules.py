"""Which master calibrates which frame: rules declared in the configuration,
that explain themselves.

A rule per calibration type (``[calibration.bias]``, ``.dark``, ``.flat`` in
obsarch.toml, defaults below) says what must match between a frame and a
master (read-out mode, binning, gain, band, detector...), what may differ
within a tolerance (CCD temperature within 2 C), how old a master may be,
how many frames it must combine, and which of the masters that pass wins
(same night first, then nearest in time). The shape of every detector is
always checked: a frame never gets a master of another shape.

Choosing is kept apart from applying (as in BANZAI's calibrations.py):
:func:`choose` judges every candidate and returns a :class:`Choice` that
says which won and why, or why each was refused; the steps apply it and
``obsarch calib explain`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select

from archive.db import rows_in, transaction
from archive.detectors import (
    Detector,
    detectors_of_files,
    pair_detectors,
    select_detectors,
)
from archive.exceptions import ConfigError, ObsarchError
from archive.models import Exposure, File, HeaderCard, Product, Root, Run
from processing.runs import file_content, stale_products

KINDS = ("bias", "dark", "flat")
# Exposure columns a rule may match on, and "binning" (x and y), "detector"
# (the same detectors by name, and the same detector id when a file names
# one) and "shape" (every detector paired has the frame's shape).
MATCH_KEYS = ("instrument", "telescope", "readout_mode", "binning", "gain", "band", "exptime", "detector", "shape")
TOLERANCE_KEYS = ("ccd_temp", "gain", "exptime")
PREFERENCES = ("same_night", "nearest_time", "most_inputs")
_TABLE_KEYS = ("match", "tolerance", "prefer", "max_age_days", "min_inputs")
_UNITS = {"ccd_temp": "C", "gain": "e-/ADU", "exptime": "s"}


@dataclass(frozen=True)
class CalibrationRule:
    """How a master of ``kind`` is chosen for a frame (see the module docstring).

    match : what must be equal; tolerance : column -> largest difference
    (ccd_temp in C, gain in e-/ADU, exptime in s); prefer : ranking of the
    masters that pass; max_age_days : the largest time between the frame and
    the master's mean time (None: no limit); min_inputs : frames the master
    must combine.
    """

    kind: str
    match: tuple[str, ...]
    tolerance: tuple[tuple[str, float], ...] = ()
    prefer: tuple[str, ...] = ("same_night", "nearest_time")
    max_age_days: float | None = 30.0
    min_inputs: int = 2


_COMMON = ("instrument", "readout_mode", "binning", "gain", "detector", "shape")
DEFAULT_RULES = {
    "bias": CalibrationRule("bias", _COMMON, (("ccd_temp", 2.0),)),
    "dark": CalibrationRule("dark", _COMMON, (("ccd_temp", 2.0),)),
    "flat": CalibrationRule("flat", (*_COMMON, "band")),
}


# -- the configuration ---------------------------------------------------------------


def rules_from_config(config: dict | None, source: str | Path = "obsarch.toml") -> dict[str, CalibrationRule]:
    """The default rules, each updated by its ``[calibration.KIND]`` table.

    A table replaces only the keys it gives. An unknown type, key, match
    key, preference or a value of the wrong type is a :class:`ConfigError`
    of one line naming the file, the key and what is expected.
    """
    section = (config or {}).get("calibration", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: calibration: expected a table of [calibration.bias|dark|flat]")
    rules = dict(DEFAULT_RULES)
    for kind, table in section.items():
        where = f"{source}: [calibration.{kind}]"
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown calibration type {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table with {', '.join(_TABLE_KEYS)}")
        rules[kind] = _rule(kind, table, rules[kind], where)
    return rules


def _rule(kind: str, table: dict, base: CalibrationRule, where: str) -> CalibrationRule:
    for key in table:
        if key not in _TABLE_KEYS:
            raise ConfigError(f"{where} {key}: unknown key; expected one of {', '.join(_TABLE_KEYS)}")
    match = _names(table, "match", MATCH_KEYS, where) if "match" in table else base.match
    prefer = _names(table, "prefer", PREFERENCES, where) if "prefer" in table else base.prefer
    tolerance = _tolerance(table["tolerance"], where) if "tolerance" in table else base.tolerance
    max_age = base.max_age_days
    if "max_age_days" in table:
        max_age = table["max_age_days"]
        if not _non_negative(max_age):
            raise ConfigError(f"{where} max_age_days: expected a number of days >= 0, got {max_age!r}")
    min_inputs = table.get("min_inputs", base.min_inputs)
    if isinstance(min_inputs, bool) or not isinstance(min_inputs, int) or min_inputs < 1:
        raise ConfigError(f"{where} min_inputs: expected a whole number >= 1, got {min_inputs!r}")
    return CalibrationRule(kind, match, tolerance, prefer, None if max_age is None else float(max_age), min_inputs)


def _non_negative(value) -> bool:
    """A number >= 0: not a bool, and not nan (which no comparison refuses,
    so every candidate would pass ``|a - b| <= nan``)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0


def _names(table: dict, key: str, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} {key}: expected a list of names from {', '.join(allowed)}, got {value!r}")
    for name in value:
        if name not in allowed:
            raise ConfigError(f"{where} {key}: unknown name {name!r}; expected names from {', '.join(allowed)}")
    return tuple(value)


def _tolerance(value, where: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} tolerance: expected a table such as {{ ccd_temp = 2.0 }}, got {value!r}")
    for key, limit in value.items():
        if key not in TOLERANCE_KEYS:
            raise ConfigError(f"{where} tolerance.{key}: unknown column; expected one of {', '.join(TOLERANCE_KEYS)}")
        if not _non_negative(limit):
            raise ConfigError(f"{where} tolerance.{key}: expected a number >= 0, got {limit!r}")
    return tuple((k, float(v)) for k, v in value.items())


# -- frames and masters as the rules see them ------------------------------------------


@dataclass
class Calib:
    """A frame or a master: the values rules compare, and its detectors."""

    exposure_id: int
    file_id: int
    path: str
    content: str
    instrument: str | None = None
    telescope: str | None = None
    readout_mode: str | None = None
    xbin: int | None = None
    ybin: int | None = None
    gain: float | None = None
    ccd_temp: float | None = None
    band: str | None = None
    exptime: float | None = None
    mjd: float | None = None
    night: str | None = None
    detector: str | None = None
    frame_number: int | None = None
    detectors: list[Detector] = field(default_factory=list)
    n_inputs: int | None = None
    stale: str | None = None  # a master: why it is stale (obsarch stale), which refuses it
    holds_bias: bool = False  # a master dark made without a master bias: the bias is in it

    @property
    def binning(self) -> str | None:
        return None if self.xbin is None and self.ybin is None else f"{self.xbin}x{self.ybin}"


_COLUMNS = ("instrument", "telescope", "readout_mode", "xbin", "ybin", "gain", "ccd_temp", "band", "exptime", "mjd",
            "night", "detector", "frame_number")


def _load(conn, where, ids: list[int] | None = None) -> list[Calib]:
    """The exposures of ``where`` (and of ``ids``, asked 500 at a time:
    PostgreSQL takes at most 65,535 parameters), in time order."""
    rows = rows_in(conn, select(Exposure.id, File.id.label("file_id"), (Root.path + "/" + File.relpath).label("path"),
                                File.header_hash, File.size, File.mtime_ns, *[getattr(Exposure, c) for c in _COLUMNS])
                   .join(File, File.id == Exposure.file_id).join(Root, Root.id == File.root_id)
                   .where(File.status == "present", *where), Exposure.id, ids)
    rows.sort(key=lambda r: (r.mjd is None, r.mjd or 0.0, r.id))
    detectors = detectors_of_files(conn, [r.file_id for r in rows])
    return [Calib(r.id, r.file_id, r.path, file_content(r), *(getattr(r, c) for c in _COLUMNS),
                  detectors=detectors[r.file_id]) for r in rows]


def load_frames(engine: Engine, exposure_ids: list[int]) -> list[Calib]:
    """The exposures ``exposure_ids`` as the rules see them, in time order."""
    with transaction(engine) as conn:
        return _load(conn, [], exposure_ids)


def load_masters(engine: Engine, kind: str) -> list[Calib]:
    """Every master of ``kind`` in the catalog, with how many frames it combines
    (its NCOMBINE card)."""
    with transaction(engine) as conn:
        made = select(Product.file_id).where(Product.kind == f"master_{kind}")
        masters = _load(conn, [Exposure.file_id.in_(made)])
        counts = dict(conn.execute(
            select(HeaderCard.file_id, func.max(HeaderCard.value_num))
            .where(HeaderCard.file_id.in_([m.file_id for m in masters]), HeaderCard.keyword == "NCOMBINE")
            .group_by(HeaderCard.file_id)
        ).all()) if masters else {}
        with_bias = _made_with_bias(conn, [m.file_id for m in masters]) if kind == "dark" else {}
    stale = {row["file_id"]: row["reason"] for row in stale_products(engine)} if masters else {}
    for master in masters:
        master.n_inputs = int(counts[master.file_id]) if counts.get(master.file_id) is not None else None
        master.stale = stale.get(master.file_id)
        master.holds_bias = kind == "dark" and not with_bias.get(master.file_id, True)
    return masters


def _made_with_bias(conn, file_ids: list[int]) -> dict[int, bool]:
    """Whether the run that last made each master took a master bias off
    (its parameters name the masters it subtracted)."""
    import json

    latest = select(func.max(Product.id)).where(Product.file_id.in_(file_ids)).group_by(Product.file_id)
    rows = conn.execute(select(Product.file_id, Run.params_json).join(Run, Run.id == Product.run_id)
                        .where(Product.id.in_(latest))).all() if file_ids else []
    return {file_id: "bias" in (json.loads(params or "{}").get("masters") or {}) for file_id, params in rows}


# -- choosing ----------------------------------------------------------------------------


NO_IMAGE = "no image to calibrate: the file has no image HDU (an X-ray event list is a table, a header-only file has no pixels)"


@dataclass
class Verdict:
    """One candidate judged: the first rule that refused it, or the values it met."""

    master: Calib
    refused: str | None
    met: list[str]
    distance_days: float | None = None


@dataclass
class Choice:
    """The master chosen for one frame and type, and every candidate's verdict."""

    frame: Calib
    kind: str
    chosen: Verdict | None
    verdicts: list[Verdict]
    rule: CalibrationRule
    problem: str | None = None  # the frame itself cannot be judged (--hdu names no detector of it)

    @property
    def reason(self) -> str:
        """One line: why this master, or why none."""
        if self.problem is not None:
            return self.problem
        if self.chosen is not None:
            return f"{Path(self.chosen.master.path).name}: " + "; ".join(self.chosen.met)
        if not self.verdicts and self.kind == "dark":  # optional: calibrate goes on without one
            return "no master dark in the catalog: none is subtracted (`obsarch calib dark` makes one)"
        if not self.verdicts:
            return f"no master {self.kind} in the catalog; run `obsarch calib {self.kind}` first"
        refusals = "; ".join(f"{Path(v.master.path).name}: {v.refused}" for v in self.verdicts)
        return f"no master {self.kind} fits: {refusals}"


def choose(frame: Calib, kind: str, candidates: list[Calib], rule: CalibrationRule,
           hdus: tuple[str, ...] | None = None, bias_off: bool = False) -> Choice:
    """Judge every candidate master of ``kind`` for ``frame`` by ``rule``; the
    winner is the best passing one by the rule's preferences. ``hdus``
    restricts the frame's detectors (``--hdu``); ``bias_off``: a master bias
    comes off the frame too. A file with no image (an X-ray event list is a
    table) has nothing to calibrate, whatever masters there are."""
    if not frame.detectors:
        return Choice(frame, kind, None, [], rule, problem=NO_IMAGE)
    try:
        detectors = select_detectors(frame.detectors, hdus)
    except ObsarchError as exc:
        return Choice(frame, kind, None, [], rule, problem=str(exc))
    verdicts = [_judge(frame, detectors, master, rule, bias_off) for master in candidates]
    passing = [v for v in verdicts if v.refused is None]
    chosen = min(passing, key=lambda v: _rank(frame, v, rule)) if passing else None
    if chosen is not None:
        chosen.met.append("preferred: " + _preference_text(frame, chosen, rule))
    return Choice(frame, kind, chosen, verdicts, rule)


def _judge(frame: Calib, detectors: list[Detector], master: Calib, rule: CalibrationRule, bias_off: bool = False) -> Verdict:
    met: list[str] = []
    if master.stale:  # made from a frame since graded bad, a changed input, a master since rebuilt...
        again = "" if "`obsarch" in master.stale else f"; make it again: `obsarch calib {rule.kind}`"
        return Verdict(master, f"stale: {master.stale}{again}", met, _distance(frame, master))
    if master.holds_bias and (why := _bias_held(frame, master, bias_off)):
        return Verdict(master, why, met, _distance(frame, master))
    checks = [*(("match", key) for key in rule.match if key != "shape"), ("match", "shape"),
              *(("tolerance", key) for key, _ in rule.tolerance), ("age", None), ("inputs", None)]
    for kind, key in checks:
        if kind == "match":
            outcome = _match(frame, detectors, master, key)
        elif kind == "tolerance":
            outcome = _within(frame, master, key, dict(rule.tolerance)[key])
        elif kind == "age":
            outcome = _age(frame, master, rule.max_age_days)
        else:
            outcome = _inputs(master, rule.min_inputs)
        refused, text = outcome
        if refused:
            return Verdict(master, text, met, _distance(frame, master))
        if text:
            met.append(text)
    return Verdict(master, None, met, _distance(frame, master))


def _bias_held(frame: Calib, dark: Calib, bias_off: bool) -> str | None:
    """Why a dark made without a master bias (the bias in it) cannot come
    off ``frame``: a master bias comes off too (the bias would come off
    twice: a sky of 399 came out -111), or it would be scaled to another
    exposure time (and its bias with it). None when it can: the frame's
    exposure time is the dark's and no bias comes off."""
    held = "holds the bias: made without a master bias"
    if bias_off:
        return f"{held}, and this frame's master bias comes off too (twice); make it again: `obsarch calib dark`"
    if frame.exptime is None or dark.exptime is None or abs(frame.exptime - dark.exptime) > 1e-6 * max(dark.exptime, 1.0):
        return (f"{held}, and scaled from its {_show(dark.exptime)} s to the frame's {_show(frame.exptime)} s the bias "
                "would be scaled too; make a master bias, then the dark again")
    return None


def _show(value) -> str:
    return "unknown" if value is None else str(value)


def _match(frame: Calib, detectors: list[Detector], master: Calib, key: str) -> tuple[bool, str]:
    if key == "shape":
        return _shapes(frame, detectors, master)
    if key == "detector":
        _, missing = pair_detectors(detectors, master.detectors, single=len(frame.detectors) == 1)
        if missing:
            return True, f"detector: the master has no {', '.join(missing)}"
        if frame.detector != master.detector:
            return True, f"detector: frame {_show(frame.detector)}, master {_show(master.detector)}"
        names = ",".join(d.name for d in detectors)
        return False, f"detector {names}" + (f" ({frame.detector})" if frame.detector else "")
    ours, theirs = getattr(frame, key), getattr(master, key)
    if ours != theirs:
        return True, f"{key}: frame {_show(ours)}, master {_show(theirs)}"
    return False, f"{key} {_show(ours)}"


def _shapes(frame: Calib, detectors: list[Detector], master: Calib) -> tuple[bool, str]:
    if not detectors:
        return True, "shape: the frame has no detector to calibrate"
    pairs, missing = pair_detectors(detectors, master.detectors, single=len(frame.detectors) == 1)
    if missing:
        return True, f"shape: the master has no detector {', '.join(missing)}"
    for ours, theirs in pairs:
        if ours.shape != theirs.shape:
            return True, f"shape: frame {ours.name} {ours.shape_text}, master {theirs.name} {theirs.shape_text}"
    shapes = sorted({d.shape_text for d in detectors})
    return False, f"shape {', '.join(shapes)} ({len(detectors)} detector{'s' if len(detectors) > 1 else ''})"


def _within(frame: Calib, master: Calib, key: str, limit: float) -> tuple[bool, str]:
    ours, theirs = getattr(frame, key), getattr(master, key)
    unit = _UNITS.get(key, "")
    if ours is None and theirs is None:
        return False, f"{key} unknown on both"
    if ours is None or theirs is None:
        return True, f"{key}: frame {_show(ours)}, master {_show(theirs)} (within {limit:g} {unit} needs both)"
    difference = abs(ours - theirs)
    if difference > limit:
        return True, f"{key}: |{ours:.4g} - {theirs:.4g}| = {difference:.3g} {unit} > {limit:g} {unit}"
    return False, f"{key} |{ours:.4g} - {theirs:.4g}| = {difference:.3g} {unit} <= {limit:g} {unit}"


def _distance(frame: Calib, master: Calib) -> float | None:
    if frame.mjd is None or master.mjd is None:
        return None
    return abs(frame.mjd - master.mjd)


def _age(frame: Calib, master: Calib, max_age: float | None) -> tuple[bool, str]:
    if max_age is None:
        return False, ""
    distance = _distance(frame, master)
    if distance is None:
        return True, f"age: {'frame' if frame.mjd is None else 'master'} has no time to check max_age_days {max_age:g}"
    if distance > max_age:
        return True, f"age: {distance:.2f} d > max_age_days {max_age:g}"
    return False, f"age {distance:.2f} d <= {max_age:g} d"


def _inputs(master: Calib, minimum: int) -> tuple[bool, str]:
    if master.n_inputs is None:
        return (True, f"inputs: unknown (no NCOMBINE), min_inputs {minimum}") if minimum > 1 else (False, "")
    if master.n_inputs < minimum:
        return True, f"inputs: {master.n_inputs} < min_inputs {minimum}"
    return False, f"inputs {master.n_inputs} >= {minimum}"


def _rank(frame: Calib, verdict: Verdict, rule: CalibrationRule) -> tuple:
    key = []
    for preference in rule.prefer:
        if preference == "same_night":
            key.append(0 if frame.night is not None and frame.night == verdict.master.night else 1)
        elif preference == "nearest_time":
            key.append(verdict.distance_days if verdict.distance_days is not None else float("inf"))
        elif preference == "most_inputs":
            key.append(-(verdict.master.n_inputs or 0))
    return (*key, -verdict.master.file_id)  # then the newest


def _preference_text(frame: Calib, verdict: Verdict, rule: CalibrationRule) -> str:
    parts = []
    for preference in rule.prefer:
        if preference == "same_night":
            parts.append("same night" if frame.night is not None and frame.night == verdict.master.night
                         else f"night {_show(verdict.master.night)}")
        elif preference == "nearest_time":
            parts.append(f"{verdict.distance_days:.3f} d away" if verdict.distance_days is not None else "time unknown")
        elif preference == "most_inputs":
            parts.append(f"{_show(verdict.master.n_inputs)} inputs")
    return ", ".join(parts) or "newest"


def choose_all(engine: Engine, exposure_ids: list[int], kinds: tuple[str, ...], rules: dict[str, CalibrationRule],
               hdus: tuple[str, ...] | None = None, bias_too: bool = False) -> list[Choice]:
    """A choice per frame and type, in time order; the catalog is read once per type.

    A dark is judged knowing whether a master bias comes off too. With
    ``bias_too`` a bias is chosen for that even when only darks are asked
    for, as ``calibrate`` takes one (``calib explain --type dark`` showed a
    dark holding the bias as chosen, one ``calibrate`` refuses); without, a
    caller that takes no bias (``calibrate(use=("dark",))``) has none."""
    frames = load_frames(engine, exposure_ids)
    judged = (*kinds, "bias") if bias_too and "dark" in kinds and "bias" not in kinds else tuple(kinds)
    masters = {kind: load_masters(engine, kind) for kind in judged}
    choices = []
    for frame in frames:
        bias_off = False
        for kind in sorted(judged, key=lambda k: k != "bias"):  # bias first
            choice = choose(frame, kind, masters[kind], rules.get(kind, DEFAULT_RULES[kind]), hdus, bias_off)
            bias_off = bias_off or (kind == "bias" and choice.chosen is not None)
            if kind in kinds:
                choices.append(choice)
    return choices


def explain_rows(choices: list[Choice]) -> list[dict]:
    """One row per frame, type and candidate, for people and for scripts."""
    rows = []
    for choice in choices:
        frame = choice.frame
        base = {"exposure_id": frame.exposure_id, "frame_number": frame.frame_number, "frame": frame.path,
                "type": choice.kind}
        if not choice.verdicts:
            rows.append({**base, "master": None, "verdict": "none", "reason": choice.reason})
        for verdict in choice.verdicts:
            won = choice.chosen is verdict
            rows.append({**base, "master": verdict.master.path,
                         "verdict": "chosen" if won else ("refused" if verdict.refused else "passed, not preferred"),
                         "reason": verdict.refused or "; ".join(verdict.met)})
    return rows
