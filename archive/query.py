"""The selection language: text -> a small tree -> SQLAlchemy expressions.

    band == 'V' and frame_type == 'science' and exptime >= 60
    hdr['ESO INS DROT POSANG'] > 100 and night == '2014-07-27'
    hdr[1]['EXTNAME'] == 'SCI' or object like 'ngc%'
    3852-3861,3885

The parser builds a tree that knows nothing of SQL; :class:`Compiler`
turns it into a SQLAlchemy clause with bound parameters, so no user text is
ever formatted into SQL and the same tree runs on SQLite and PostgreSQL.
Names are resolved through :data:`FIELDS`.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    Numeric,
    Select,
    String,
    Text,
    and_,
    case,
    cast,
    func,
    intersect,
    not_,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import literal, literal_column
from sqlalchemy.sql.functions import FunctionElement

from archive.exceptions import SelectionError
from archive.headers import normalize_keyword
from archive.keywords import parse_fits_date
from archive.models import (
    LONG_TEXT,
    NUMERIC,
    SHORT_TEXT,
    TEXT_INDEX_LIMIT,
    Exposure,
    File,
    Flag,
    Group,
    GroupMember,
    HeaderCard,
    Metric,
    Offset,
    Product,
    Root,
)

# -- tree --------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    pos: int = 0


@dataclass(frozen=True)
class Header:
    keyword: str
    hdu: int | None = None
    pos: int = 0

    @property
    def label(self) -> str:
        hdu = f"[{self.hdu}]" if self.hdu is not None else ""
        return f"hdr{hdu}['{self.keyword}']"


@dataclass(frozen=True)
class Call:
    function: str
    argument: Column | Header
    pos: int = 0


Field = Column | Header | Call


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str
    value: object


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple
    negate: bool = False


@dataclass(frozen=True)
class Between:
    field: Field
    low: object
    high: object
    negate: bool = False


@dataclass(frozen=True)
class Match:
    field: Field
    pattern: str
    glob: bool
    negate: bool = False


@dataclass(frozen=True)
class IsNull:
    field: Field
    negate: bool = False


@dataclass(frozen=True)
class Frames:
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


# -- tokens ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
  | (?P<op>==|!=|<>|<=|>=|<|>|=)
  | (?P<punct>[()\[\],\-])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_WORDS = {"and", "or", "not", "in", "between", "like", "glob", "is", "null", "true", "false"}


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, op, punct, name, word, end
    text: str
    pos: int
    value: object = None


def tokenize(text: str, what: str = "selection", shown: str | None = None) -> list[Token]:
    bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:  # an argument whose bytes were not UTF-8 (Python keeps them as surrogates)
        raise _error(text, bad, "the text is not valid UTF-8", what, shown)
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise _error(text, pos, f"unexpected character {text[pos]!r}", what, shown)
        kind, raw = match.lastgroup, match.group()
        if kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            if isinstance(value, float) and math.isinf(value):
                raise _error(text, pos, f"the number {raw[:30]} is beyond the largest a catalog stores (about 1.8e308)", what, shown)
            # a minus sign, not a frame range's dash (3852-3860): -2**63 fits
            negated = (bool(tokens) and tokens[-1].kind == "punct" and tokens[-1].text == "-"
                       and not (len(tokens) > 1 and tokens[-2].kind == "number"))
            if isinstance(value, int) and value >= 2**63 + negated:  # -2**63 fits
                raise _error(text, pos, f"the integer {raw[:30]}{'...' if len(raw) > 30 else ''} does not fit in 64 bits", what, shown)
            tokens.append(Token(kind, raw, pos, value))
        elif kind == "string":
            quote = raw[0]
            body = raw[1:-1].replace(quote * 2, quote)
            if "\x00" in body:
                raise _error(text, pos, "a string holds a NUL byte, which no stored value has", what, shown)
            tokens.append(Token(kind, raw, pos, re.sub(r"\\(.)", r"\1", body)))
        elif kind == "name" and raw.lower() in _WORDS:
            tokens.append(Token("word", raw.lower(), pos))
        elif kind != "ws":
            tokens.append(Token(kind, raw, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _error(text: str, pos: int, message: str, what: str = "selection", shown: str | None = None) -> SelectionError:
    """``shown``: the text as the person wrote it, where ``text`` was
    respelled for parsing with every column kept in place."""
    near = (shown or text)[pos : pos + 20] or "the end"
    return SelectionError(f"{what} {_shown(shown or text)}: {message} at column {pos + 1} (near {_quoted(near)})")


def _shown(text: str) -> str:
    return _quoted(text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)")


def _quoted(text: str) -> str:
    """``text`` in quotes, as repr writes it, but a byte that was not UTF-8
    (Python's surrogate escape of argv) as the byte: ``'a\\xff'``, not ``'a\\udcff'``."""
    return re.sub(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])", r"\1\\x\2", repr(text))


@contextlib.contextmanager
def naming(what: str, text):
    """A name that cannot be compiled says which text it is in (``columns
    'exptime,bnd': unknown name 'bnd' at column 9``); a tree built by code
    (``text`` not a string) has no text to name."""
    try:
        yield
    except SelectionError as exc:
        if not isinstance(text, str) or str(exc).startswith(f"{what} "):  # a parse error names it already
            raise
        raise SelectionError(f"{what} {_shown(text)}: {exc}") from None


# -- parser ------------------------------------------------------------------


MAX_NESTING = 100  # parentheses and nots; deeper is no selection a person writes
MAX_IN_PARAMETERS = 500  # a longer value list is sent as one parameter (backends cap bound parameters)


class _Parser:
    def __init__(self, text: str, what: str = "selection", shown: str | None = None):
        self.text, self.what, self.shown = text, what, shown
        self.tokens = tokenize(text, what, shown)
        self.i = 0
        self.depth = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"nested more than {MAX_NESTING} deep")

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.tok
        self.i += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        if self.tok.kind == kind and (text is None or self.tok.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str | None, what: str) -> Token:
        token = self.accept(kind, text)
        if token is None:
            raise self.fail(f"expected {what}")
        return token

    def fail(self, message: str) -> SelectionError:
        found = self.tok.text or "the end"
        return _error(self.text, self.tok.pos, f"{message}, found {found!r}", self.what, self.shown)

    def parse(self):
        if self.tok.kind == "end":
            raise self.fail("empty selection: expected a condition")
        node = self.parse_or()
        if self.tok.kind != "end":
            raise self.fail("expected 'and', 'or' or the end")
        return node

    def parse_or(self):
        items = [self.parse_and()]
        while self.accept("word", "or"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def parse_and(self):
        items = [self.parse_not()]
        while self.accept("word", "and"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def parse_not(self):
        if self.accept("word", "not"):
            self.nest()
            node = Not(self.parse_not())
            self.depth -= 1
            return node
        return self.parse_predicate()

    def parse_predicate(self):
        if self.accept("punct", "("):
            self.nest()
            node = self.parse_or()
            self.expect("punct", ")", "')'")
            self.depth -= 1
            return node
        if self.tok.kind == "number" and isinstance(self.tok.value, int) and self.peek().kind != "op":
            return self.parse_frames()
        field = self.parse_field()
        return self.parse_condition(field)

    def parse_frames(self) -> Frames:
        ranges = []
        while True:
            low = self.take()
            if low.kind != "number" or not isinstance(low.value, int):
                self.i -= 1
                raise self.fail("expected a frame number")
            high = low
            if self.accept("punct", "-"):
                high = self.take()
                if high.kind != "number" or not isinstance(high.value, int):
                    self.i -= 1
                    raise self.fail("expected the last frame number of the range")
                if high.value < low.value:
                    raise _error(self.text, low.pos, f"range {low.value}-{high.value} runs backwards")
            ranges.append((low.value, high.value))
            if not self.accept("punct", ","):
                return Frames(tuple(ranges))

    def parse_field(self) -> Field:
        token = self.tok
        if token.kind != "name":
            raise self.fail("expected a name (a column or hdr['KEY'])")
        self.take()
        if token.text == "hdr":
            return self.parse_header(token.pos)
        if token.text.lower() == "metric" and self.tok.text == "[":
            return self.parse_metric(token.pos)
        if self.accept("punct", "("):
            argument = self.parse_field()
            self.expect("punct", ")", "')'")
            if token.text.lower() != "abs":
                raise _error(self.text, token.pos, f"unknown function {token.text!r} (known: abs)")
            return Call("abs", argument, token.pos)
        return Column(token.text.lower(), token.pos)

    def parse_header(self, pos: int) -> Header:
        self.expect("punct", "[", "'[' after hdr")
        hdu = None
        if self.tok.kind == "number":
            hdu = self.take().value
            if not isinstance(hdu, int):
                raise self.fail("expected an HDU number")
            self.expect("punct", "]", "']'")
            self.expect("punct", "[", "'[' and a keyword")
        key = self.expect("string", None, "a quoted keyword such as 'EXPTIME'")
        self.expect("punct", "]", "']'")
        keyword = normalize_keyword(str(key.value))
        if not keyword:
            raise _error(self.text, key.pos, "empty keyword")
        return Header(keyword, hdu, pos)

    def parse_metric(self, pos: int) -> Column:
        """``metric['pileup']``: a named metric (from a tool or a person)."""
        self.expect("punct", "[", "'[' after metric")
        name = self.expect("string", None, "a quoted metric name such as 'pileup'")
        self.expect("punct", "]", "']'")
        return Column(f"metric['{str(name.value).strip().lower()}']", pos)

    def parse_condition(self, field: Field):
        if (op := self.accept("op")) is not None:
            return Compare(field, {"=": "==", "<>": "!="}.get(op.text, op.text), self.parse_value())
        negate = bool(self.accept("word", "not"))
        if self.accept("word", "in"):
            self.expect("punct", "(", "'(' after in")
            values = [self.parse_value()]
            while self.accept("punct", ","):
                values.append(self.parse_value())
            self.expect("punct", ")", "')'")
            return In(field, tuple(values), negate)
        if self.accept("word", "between"):
            low = self.parse_value()
            self.expect("word", "and", "'and' in between ... and ...")
            return Between(field, low, self.parse_value(), negate)
        for word in ("like", "glob"):
            if self.accept("word", word):
                pattern = self.expect("string", None, f"a quoted pattern after {word}")
                return Match(field, pattern.value, word == "glob", negate)
        if not negate and self.accept("word", "is"):
            negate = bool(self.accept("word", "not"))
            self.expect("word", "null", "null after is")
            return IsNull(field, negate)
        raise self.fail("expected a comparison (==, !=, <, >, in, between, like, glob, is null)")

    def parse_value(self):
        token = self.tok
        if token.kind in ("number", "string"):
            return self.take().value
        if self.accept("punct", "-"):
            number = self.expect("number", None, "a number after '-'")
            return -number.value
        if token.kind == "word" and token.text in ("true", "false", "null"):
            self.take()
            return {"true": True, "false": False, "null": None}[token.text]
        raise self.fail("expected a value (a number, a quoted string, true, false or null)")


def parse(text: str):
    """Parse a selection into its tree; raise :class:`SelectionError`."""
    return _Parser(text).parse()


# -- building trees in code ----------------------------------------------------
#
# Programs compose trees; only people write selection text. A value given
# here is a value of the tree (bound as a parameter when compiled), so a
# quote, a backslash or "' or 1 == 1" in it is only ever that value.

Node = Compare | In | Between | Match | IsNull | Frames | BoolOp | Not


def as_tree(selection: str | Node | None) -> Node | None:
    """A person's selection text (parsed) or a tree (as is); None for all."""
    if selection is None or isinstance(selection, str) and not selection.strip():
        return None
    return parse(selection) if isinstance(selection, str) else selection


def int_param(value):
    """``value``, bound as a BIGINT when it is an integer beyond 32 bits:
    PostgreSQL refuses such a parameter for an integer column (an id, an HDU
    index) with 'integer out of range' instead of finding nothing."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**31:
        return literal(value, BigInteger())
    return value


def named(selection: str | Node | None, command: str) -> str | Node:
    """The selection of a command that changes exposures (grades, groups,
    metrics, regions): an empty or blank one is refused rather than taken
    as every exposure, so an empty shell variable cannot regrade a catalog."""
    if selection is None or isinstance(selection, str) and not selection.strip():  # as_tree's "all", without parsing
        raise SelectionError(f"{command} needs frame numbers or a selection, and the one given is empty "
                             "(for every exposure, say so: \"id > 0\")")
    return selection


def compare(name: str, op: str, value) -> Compare:
    """``name op value`` on a named column, e.g. ``compare("band", "==", "V")``."""
    if op not in _OPS:
        raise SelectionError(f"unknown comparison {op!r}")
    return Compare(Column(name), op, value)


def one_of(name: str, values) -> In:
    """``name in (values)``."""
    return In(Column(name), tuple(values))


def is_null(name: str, negate: bool = False) -> IsNull:
    return IsNull(Column(name), negate)


def header_is(keyword: str, value) -> Compare:
    """``hdr['KEYWORD'] == value``."""
    return Compare(Header(" ".join(keyword.upper().split())), "==", value)


def ids(values) -> In:
    """The exposures with these ids."""
    return In(Column("id"), tuple(int(v) for v in values))


def all_of(*nodes: Node | str | None) -> Node | None:
    """The AND of the given trees (text is parsed; None is left out)."""
    items = tuple(node for node in (as_tree(n) for n in nodes) if node is not None)
    if not items:
        return None
    return items[0] if len(items) == 1 else BoolOp("and", items)


def frame_ranges(node: Node | None) -> list[Frames]:
    """The frame-number terms of a tree."""
    found: list[Frames] = []

    def walk(item):
        if isinstance(item, Frames):
            found.append(item)
        elif isinstance(item, BoolOp):
            for sub in item.items:
                walk(sub)
        elif isinstance(item, Not):
            walk(item.item)

    walk(node)
    return found


def parse_columns(text: str, what: str = "columns") -> list[Field]:
    """Parse ``frame_number,hdr['EXPTIME'],path`` into fields."""
    return [field for field, _ in _field_list(text, what, signed=False)]


def parse_sort(text: str) -> list[tuple[Field, bool]]:
    """Parse ``-exptime,+date_obs`` into (field, descending) pairs."""
    # +name is ascending, as a bare name: a blank in its place keeps every column where it was
    return _field_list(re.sub(r"(^|,)(\s*)\+", r"\1\2 ", text), "sort", signed=True, shown=text)


def _field_list(text: str, what: str, signed: bool, shown: str | None = None) -> list[tuple[Field, bool]]:
    parser = _Parser(text, what, shown)
    items = []
    while True:
        descending = signed and parser.accept("punct", "-") is not None
        items.append((parser.parse_field(), descending))
        if not parser.accept("punct", ","):
            break
    if parser.tok.kind != "end":
        raise parser.fail(f"expected ',' or the end of the {'sort' if signed else 'column'} list")
    return items


# -- names -------------------------------------------------------------------


@dataclass(frozen=True)
class FieldDef:
    """A name in the language: its SQL expression, its kind of value, and
    the tables beyond ``exposures`` it needs joined."""

    expression: Callable[[], ColumnElement]
    kind: str  # number, text, datetime
    tables: tuple[str, ...] = ()
    values: tuple[str, ...] = ()  # the only values it can hold, when they are few and fixed: others are refused
    # a SELECT of the values it holds, cheap to read (an index or a few rows): for hints
    # when a selection found nothing (see value_hints); indexed text columns need none
    stored: Callable[[], Select] | None = None


def _path() -> ColumnElement:
    return Root.path + "/" + File.relpath


_FILES, _ROOTS = ("files",), ("files", "roots")
FIELDS: dict[str, FieldDef] = {
    "id": FieldDef(lambda: Exposure.id, "number"),
    "file_id": FieldDef(lambda: Exposure.file_id, "number"),
    "path": FieldDef(_path, "text", _ROOTS),
    "relpath": FieldDef(lambda: File.relpath, "text", _FILES),
    "root": FieldDef(lambda: Root.path, "text", _ROOTS),
    "status": FieldDef(lambda: File.status, "text", _FILES, ("present", "missing", "unreadable")),
    "size": FieldDef(lambda: File.size, "number", _FILES),
    "version": FieldDef(lambda: File.version, "number", _FILES),
    "header_hash": FieldDef(lambda: File.header_hash, "text", _FILES),
    "date_obs": FieldDef(lambda: Exposure.date_obs, "datetime"),
}
for _name in ("instrument", "telescope", "obsid", "object", "frame_type", "band", "night", "readout_mode",
              "detector", "detector_shape"):
    FIELDS[_name] = FieldDef(lambda n=_name: getattr(Exposure, n), "text")
for _name in ("exptime", "mjd", "ra", "dec", "airmass", "frame_number", "xbin", "ybin", "gain", "ccd_temp",
              "n_detectors"):
    FIELDS[_name] = FieldDef(lambda n=_name: getattr(Exposure, n), "number")
# "2x2": x then y, as binning is spoken of
FIELDS["binning"] = FieldDef(
    lambda: cast(Exposure.xbin, String) + "x" + cast(Exposure.ybin, String), "text"
)


def _metric(name: str) -> Callable[[], ColumnElement]:
    """A quality number of the exposure, measured on its file as it is now:
    once a changed file is ingested again, the numbers of its earlier
    version are no answer (NULL) until `quality compute` measures it again."""
    from archive.models import aliased

    def expression() -> ColumnElement:
        file = aliased(File)
        return (select(getattr(Metric, name))
                .where(Metric.exposure_id == Exposure.id, file.id == Exposure.file_id, Metric.file_version == file.version)
                .correlate(Exposure).scalar_subquery())

    return expression


def current_flag_order(flag=Flag) -> tuple:
    """The one rule of which flag of an exposure is current: a person's beats
    a rule's, and the latest wins among equals (ORDER BY, first row)."""
    return case((flag.source == "person", 0), else_=1), flag.id.desc()


def current_flag(name: str, exposure_id: ColumnElement = Exposure.id) -> ColumnElement:
    """A column of the current flag of ``exposure_id`` (see :func:`current_flag_order`)."""
    from archive.models import aliased

    flag = aliased(Flag)
    return (
        select(getattr(flag, name)).where(flag.exposure_id == exposure_id).order_by(*current_flag_order(flag)).limit(1)
        .correlate_except(flag).scalar_subquery()
    )


def _current_flag(name: str) -> Callable[[], ColumnElement]:
    return lambda: current_flag(name)


for _name in ("min", "max", "mean", "median", "std", "background", "background_rms", "saturated_fraction",
              "nstars", "fwhm", "fwhm_minor", "fwhm_arcsec", "elongation", "sharpness", "pixel_scale", "repeats"):
    FIELDS[_name] = FieldDef(_metric(_name), "number")
def current_offset(exposure_id: ColumnElement = Exposure.id) -> ColumnElement:
    """The id of an exposure's current offset: its latest registration, the
    one the user asked for last (whatever its stage). When that one failed,
    the exposure has no current offset: an older one is never used instead.
    The one rule for selections, ``offsets show`` and ``stack``."""
    from archive.models import aliased

    latest = aliased(Offset)
    return (
        select(latest.id).where(latest.exposure_id == exposure_id).order_by(latest.id.desc()).limit(1)
        .correlate_except(latest).scalar_subquery()
    )


def _latest_offset(name: str) -> Callable[[], ColumnElement]:
    """A column of the exposure's current offset (NULL when it failed)."""
    return lambda: (
        select(getattr(Offset, name))
        .where(Offset.id == current_offset(), Offset.status == "ok")
        .correlate(Exposure)
        .scalar_subquery()
    )


for _name in ("dx", "dy", "rotation", "scale", "nmatched", "residual"):
    FIELDS[_name] = FieldDef(_latest_offset(_name), "number")

# Set-valued names: an exposure may be in many groups. Their expression is a
# SELECT of (exposure_id, value) pairs; comparisons become membership tests.
FIELDS["group"] = FieldDef(
    lambda: select(GroupMember.exposure_id, Group.name).join(Group, Group.id == GroupMember.group_id), "set"
)
FIELDS["group_role"] = FieldDef(lambda: select(GroupMember.exposure_id, GroupMember.role), "set")
FIELDS["product"] = FieldDef(
    lambda: select(Product.kind).where(Product.file_id == Exposure.file_id).order_by(Product.id.desc()).limit(1)
    .correlate(Exposure).scalar_subquery(),
    "text",
)
# A frame nobody and no rule has graded has the grade 'ungraded' (not NULL),
# so that "grade != 'bad'" keeps it.
UNGRADED = "ungraded"
GRADES = ("great", "ok", "marginal", "bad")  # best first; processing.quality grades with these
FIELDS["grade"] = FieldDef(lambda: func.coalesce(_current_flag("grade")(), UNGRADED), "text", (), (*GRADES, UNGRADED))
FIELDS["reason"] = FieldDef(_current_flag("reason"), "text")
FIELDS["flag_source"] = FieldDef(_current_flag("source"), "text", (), ("person", "rule"))


def register_field(name: str, expression: Callable[[], ColumnElement], kind: str, tables: tuple[str, ...] = (),
                   values: tuple[str, ...] = (), stored: Callable[[], Select] | None = None) -> None:
    """Make ``name`` usable in selections (used by processing modules); see
    :class:`FieldDef` for ``values`` and ``stored``."""
    FIELDS[name] = FieldDef(expression, kind, tables, values, stored)


from archive import xray_fields  # noqa: E402  (X-ray summaries, named metrics, regions)

xray_fields.register(register_field)


def check_fields(fields: list[Field]) -> None:
    """Raise the error of the first unknown name among ``fields``."""
    for field in fields:
        if isinstance(field, Column):
            _field_def(field)


def _field_def(column: Column) -> FieldDef:
    if column.name.startswith("metric['"):
        from archive.xray_fields import named_metric

        return FieldDef(named_metric(column.name[len("metric['") : -2]), "number")
    found = FIELDS.get(column.name)
    if found is None:
        close = difflib.get_close_matches(column.name, FIELDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(FIELDS))}"
        raise SelectionError(f"unknown name {column.name!r} at column {column.pos + 1}{hint}")
    return found


# -- compiler ----------------------------------------------------------------

_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _ordered_alike(field) -> bool:
    """A column whose values every collation orders as their bytes: night,
    digits and dashes (checked in a selection), keeps its index for ranges
    and sorts (``night >= '2017-08'`` over a million exposures)."""
    return isinstance(field, Column) and field.name == "night"


def _text_between(expression: ColumnElement, low, high, sqlite: bool) -> ColumnElement:
    """``expression BETWEEN low AND high`` for text, in byte order
    (:func:`byte_order`); on PostgreSQL as two comparisons: SQLAlchemy
    collates the bounds too, and PostgreSQL's grammar takes no COLLATE in
    BETWEEN's lower bound."""
    if sqlite:
        return expression.between(low, high)
    ordered = byte_order(expression, sqlite)
    return and_(ordered >= low, ordered <= high)


def byte_order(expression: ColumnElement, sqlite: bool) -> ColumnElement:
    """Text ordered by its bytes, as SQLite orders it, on PostgreSQL too,
    whatever its database's collation: on one collated as en-US,
    ``object < 'a'`` kept _test and left out M31, and 'ngc 300' sorted
    between 'NGC 253' and 'NGC 300'. For ranges and sorts only: equality
    is the same in every deterministic collation, and keeps its indexes."""
    return expression if sqlite else expression.collate("C")


class _Glob(FunctionElement):
    """Case-sensitive shell pattern (``*``, ``?``) on both backends."""

    inherit_cache = True
    type = Boolean()


@compiles(_Glob, "sqlite")
def _glob_sqlite(element, compiler, **kw):
    value, pattern = list(element.clauses)
    return f"{compiler.process(value, **kw)} GLOB {compiler.process(pattern, **kw)}"


@compiles(_Glob)
def _glob_regex(element, compiler, **kw):
    value, pattern = list(element.clauses)
    return f"{compiler.process(value, **kw)} ~ {compiler.process(pattern, **kw)}"


def _glob_parts(pattern: str):
    """A shell pattern as its parts, read once for both backends: ``("*", "*")``,
    ``("?", "?")``, ``("class", "^abc")`` for ``[!abc]``, or ``("char", c)``.
    A ``[`` that no ``]`` closes is the character itself, as in the shell."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        end = pattern.find("]", i + 2) if char == "[" else -1
        if char == "[" and end != -1:
            body = pattern[i + 1 : end]
            yield "class", "^" + body[1:] if body.startswith("!") else body
            i = end + 1
            continue
        yield (char if char in "*?" else "char"), char
        i += 1


def glob_to_regex(pattern: str) -> str:
    """A shell pattern (``*``, ``?``, ``[abc]``, ``[!abc]``) as an anchored POSIX regex."""
    spelled = {"*": lambda _: ".*", "?": lambda _: ".", "class": lambda body: "[" + body.replace("\\", "\\\\") + "]",
               "char": re.escape}
    return "^" + "".join(spelled[kind](text) for kind, text in _glob_parts(pattern)) + "$"


def glob_for_sqlite(pattern: str) -> str:
    """The shell pattern as SQLite's GLOB reads it: ``[!abc]`` is ``[^abc]``,
    and a ``[`` that no ``]`` closes is written ``[[]`` (GLOB matched nothing with it)."""
    spelled = {"*": str, "?": str, "class": lambda body: f"[{body}]", "char": lambda c: "[[]" if c == "[" else c}
    return "".join(spelled[kind](text) for kind, text in _glob_parts(pattern))


def _glob(value: ColumnElement, pattern: str, sqlite: bool) -> ColumnElement:
    import warnings

    # the same refusal on both backends (PostgreSQL's regex engine would fail mid-query, SQLite match nothing)
    if any(kind == "class" and re.search(r"\[[:.=]", body) for kind, body in _glob_parts(pattern)):
        raise SelectionError(f"the pattern {pattern!r} holds a POSIX bracket form ([:alpha:], [.x.], [=a=]), which a glob "
                             "does not take: list the characters, as in [a-zA-Z]")
    try:
        with warnings.catch_warnings():  # Python's 'Possible nested set' for a '[' in a class, which the shell takes
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(glob_to_regex(pattern))
    except re.error as exc:
        raise SelectionError(f"the pattern {pattern!r} is no valid glob: {exc}") from None
    # SQLite's GLOB negates a class with [^...], the shell with [!...]
    return _Glob(value, literal(glob_for_sqlite(pattern) if sqlite else glob_to_regex(pattern)))


def _balanced(combine, parts: list[ColumnElement]) -> ColumnElement:
    """``combine`` (and_/or_) of ``parts`` as a tree of logarithmic depth:
    a flat chain of 2,000 terms is deeper than SQLite's expression limit."""
    if len(parts) <= 32:
        return combine(*parts)
    middle = len(parts) // 2
    # "= true" keeps each half a unit (SQLAlchemy flattens nested and/or,
    # parentheses included) with the same three-valued result.
    return combine(_balanced(combine, parts[:middle]) == true(), _balanced(combine, parts[middle:]) == true())


def _in_values(expression: ColumnElement, values: list, sqlite: bool) -> ColumnElement:
    """``expression IN values``; a long list travels as one parameter (a JSON
    array on SQLite, an array on PostgreSQL) rather than one per value.
    Numbers are one type: PostgreSQL typed the list by its first value, so
    99.6 after a 1 was the integer 100, and refused a long mixed array."""
    plain = [v.value if isinstance(v, BindParameter) else v for v in values]  # int_param's BIGINT: the list's type says so
    if any(isinstance(v, float) for v in plain):
        values = plain = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in plain]
    if len(values) <= MAX_IN_PARAMETERS:
        return expression.in_(values)
    values = plain
    if sqlite:
        import json

        return expression.in_(select(text("value")).select_from(func.json_each(json.dumps(values, default=str))))
    from sqlalchemy import any_, bindparam
    from sqlalchemy.dialects.postgresql import ARRAY

    if any(isinstance(v, float) for v in values):  # an integer column's array rounded 5.4 to 5
        kind = Float()
    elif any(isinstance(v, int) and not -(2**31) <= v < 2**31 for v in values):  # an integer column's array would overflow
        kind = BigInteger()
    else:
        kind = expression.type
    return expression == any_(bindparam(None, values, type_=ARRAY(kind)))


# Exposure columns with an index that starts with them: an equality on one is
# a short index range SQLite can drive a query from.
INDEXED_COLUMNS = frozenset({"id", "file_id", "instrument", "obsid", "frame_type", "band", "night", "mjd", "frame_number"})
# SQLite: a keyword equality is tested exposure by exposure (EXISTS) only when
# an indexed column of the same AND picks fewer exposures than this.
DRIVING_ROWS_CAP = 50_000


class Compiler:
    """Compiles a selection tree for one backend (``dialect`` name).

    Given a connection to a SQLite catalog (``conn``), it counts a few rows
    (bounded) to choose the shape of a keyword equality; see :meth:`_header`.
    """

    def __init__(self, dialect: str, conn=None):
        self.sqlite = dialect == "sqlite"
        self.tables: set[str] = set()  # joins the compiled names need
        self.conn = conn if self.sqlite else None
        self.reader = conn  # reads the promoted keywords, when a selection names a keyword
        self.promoted: dict | None = None
        self.driving: list[ColumnElement] = []  # the root AND's equalities on indexed exposure columns
        # keyword conditions with many cards beside an indexed equality, with their cards (see ids_statement)
        self.merge: list[tuple[Compare | Between, Select]] = []
        # keyword -> the card conditions the selection asks of it outside any NOT, which the
        # keyword's column prefers (column_expressions): the card that matched, not another
        self.matched: dict[str, list[ColumnElement]] = {}
        self._negations = 0

    def __call__(self, node) -> ColumnElement:
        method = getattr(self, f"_{type(node).__name__.lower()}")
        flip = isinstance(node, Not)  # a keyword's not in, not like, not between are conditions on a card, as !=
        self._negations += flip
        try:
            return method(node)
        finally:
            self._negations -= flip

    def root(self, node) -> ColumnElement:
        """The clause of a whole selection (the tree's root)."""
        if self.conn is not None and isinstance(node, BoolOp) and node.op == "and":
            self.driving = [Compiler("sqlite")(item) for item in node.items if _indexed_equality(item)]
        try:
            return self(node)
        finally:
            self.driving = []

    def _boolop(self, node: BoolOp):
        parts = [self(item) for item in node.items]
        return _balanced(and_ if node.op == "and" else or_, parts)

    def _not(self, node: Not):
        return not_(self(node.item))

    def _frames(self, node: Frames):
        # A frame number names a camera's raw exposure, never a product made from it.
        return and_(_frame_condition(node, self.sqlite), is_raw_frame())

    def _set_def(self, field: Field) -> FieldDef | None:
        if isinstance(field, Column) and FIELDS.get(field.name) and FIELDS[field.name].kind == "set":
            return FIELDS[field.name]
        return None

    def _member(self, definition: FieldDef, predicate=None) -> ColumnElement:
        pairs = definition.expression().subquery()
        exposure, value = list(pairs.columns)
        members = select(exposure)
        if predicate is not None:
            members = members.where(predicate(value))
        return Exposure.id.in_(members)

    def _compare(self, node: Compare):
        if node.value is None and node.op not in ("==", "!="):
            raise SelectionError(f"{_label(node.field)} {node.op} null: null is compared only with == and != (or is null)")
        if node.value is None:  # == null is "is null" for every name, as in a list (see _in)
            return self._isnull(IsNull(node.field, negate=node.op == "!="))
        if (definition := self._set_def(node.field)) is not None:
            if not isinstance(node.value, str):  # PostgreSQL would refuse the operator, SQLite compare text with a number
                raise SelectionError(f"{_label(node.field)} is text; compare it with a quoted string, not {node.value!r}")
            if node.op == "!=":
                return not_(self._member(definition, lambda v: v == node.value))
            ranged = node.op not in ("==", "!=")
            return self._member(definition, lambda v: _OPS[node.op](byte_order(v, self.sqlite) if ranged else v, node.value))
        if isinstance(node.field, Header):
            kind, value = _value_kind(node.value), _card_value(node.value)
            short = node.op == "==" and _short(value)
            if kind == "text" and node.op not in ("==", "!="):
                predicate = lambda col: _OPS[node.op](byte_order(col, self.sqlite), value)  # noqa: E731
            else:
                predicate = lambda col: _OPS[node.op](col, value)  # noqa: E731
            if kind == "integer":
                if node.op not in ("==", "!="):
                    raise SelectionError(_inexact(node.field, node.value, node.op))
                predicate = (lambda col: _same_integer(col, [value], self.sqlite)) if node.op == "==" else \
                    (lambda col: not_(_same_integer(col, [value], self.sqlite)))
            return self._header(node.field, predicate, kind, short, item=node, equality=node.op == "==")
        expression, kind = self._expression(node.field)
        if kind == "text" and node.op not in ("==", "!=") and not _ordered_alike(node.field):
            expression = byte_order(expression, self.sqlite)
        return _OPS[node.op](expression, self._coerce(node.field, kind, node.value, equality=node.op in ("==", "!=")))

    def _in(self, node: In):
        if isinstance(node.field, Header) and node.negate:  # some card not in the list, as != is some card that differs
            values = [v for v in node.values if v is not None]
            if not values:  # not in (null): a card with a value
                return self._isnull(IsNull(node.field, negate=True))
            return self._outside(node.field, values)
        if None in node.values:  # SQL's IN (..., NULL) is unknown, not false, for other values: NOT would drop them
            values = tuple(v for v in node.values if v is not None)
            clause = self._isnull(IsNull(node.field))
            if values:
                clause = or_(self._in(In(node.field, values)), clause)
            return not_(clause) if node.negate else clause
        if (definition := self._set_def(node.field)) is not None:
            if other := [v for v in node.values if not isinstance(v, str)]:
                raise SelectionError(f"{_label(node.field)} is text; compare it with quoted strings, not {other[0]!r}")
            clause = self._member(definition, lambda v: _in_values(v, list(node.values), self.sqlite))
            return not_(clause) if node.negate else clause
        if isinstance(node.field, Header):
            clause = or_(*(self._header(node.field, predicate, kind, all(map(_short, values)))
                           for kind, predicate, values in self._card_tests(node.values)))
        else:
            expression, kind = self._expression(node.field)
            clause = _in_values(expression, [self._coerce(node.field, kind, v) for v in node.values], self.sqlite)
        return not_(clause) if node.negate else clause

    def _outside(self, header: Header, values: list) -> ColumnElement:
        """Files with a card ``header`` that is none of ``values``, among the
        cards of the kinds the values have (numbers: numeric cards, logicals
        alone: logical cards, strings: text cards), as ``!=`` takes them. A
        card is tested against every value at once: T in ``not in (true, 5)``
        is in the list, though it is not 5. One branch per partial index."""
        tests = self._card_tests(values)
        numeric = [(kind, test) for kind, test, _ in tests if kind != "text"]
        branches = []
        if numeric:
            is_in = [and_(HeaderCard.vtype == "b", test(HeaderCard.value_num)) if kind == "bool" else test(HeaderCard.value_num)
                     for kind, test in numeric]
            logical_only = [HeaderCard.vtype == "b"] if all(kind == "bool" for kind, _ in numeric) else []
            branches.append([text(NUMERIC), *logical_only, not_(or_(*is_in))])
        for kind, test, _ in tests:
            if kind == "text":
                branches += [[text(SHORT_TEXT), not_(test(HeaderCard.value_text))], [text(LONG_TEXT), not_(test(HeaderCard.value_text))]]
        self._matched(header, branches)  # the column shows a card outside (column_expressions)
        return Exposure.id.in_(self._union(header, branches))

    def _matched(self, header: Header, branches: list[list]) -> None:
        """Record the cards ``branches`` pick as those the keyword's column prefers, outside any NOT."""
        if not self._negations:
            place = [] if header.hdu is None else [HeaderCard.hdu_index == int_param(header.hdu)]
            self.matched.setdefault(header.keyword, []).append(and_(*place, or_(*(and_(*b) for b in branches))))

    def _card_tests(self, values) -> list[tuple[str, Callable, list]]:
        """(kind, predicate on a card's column, the values) of a keyword's ``in values``, one per
        kind of value (:func:`_value_kind`), in the order first met."""
        by_kind: dict[str, list] = {}
        for value in values:
            by_kind.setdefault(_value_kind(value), []).append(value)

        def test(kind, values):
            if kind == "integer":
                return lambda col: _same_integer(col, values, self.sqlite)
            return lambda col, vs=[_card_value(v) for v in values]: _in_values(col, vs, self.sqlite)

        return [(kind, test(kind, group), group) for kind, group in by_kind.items()]

    def _between(self, node: Between):
        if node.low is None or node.high is None:
            raise SelectionError(f"{_label(node.field)} between needs two values, not null")
        if isinstance(node.field, Header):
            if big := [v for v in (node.low, node.high) if _value_kind(v) == "integer"]:
                raise SelectionError(_inexact(node.field, big[0], "between"))
            if _value_kind(node.low) != _value_kind(node.high):
                raise SelectionError(f"{_label(node.field)} between {node.low!r} and {node.high!r}: "
                                     "both ends are numbers, or both text")
            low, high = _card_value(node.low), _card_value(node.high)
            kind = _value_kind(node.low)

            def within(col):
                return _text_between(col, low, high, self.sqlite) if kind == "text" else col.between(low, high)

            if node.negate:  # some card outside, as != (two ranges: no item to merge)
                return self._header(node.field, lambda col: not_(within(col)), kind)
            clause = self._header(node.field, within, kind, item=node)
        else:
            expression, kind = self._expression(node.field)
            low, high = (self._coerce(node.field, kind, v, equality=False) for v in (node.low, node.high))
            if kind == "text" and not _ordered_alike(node.field):
                clause = _text_between(expression, low, high, self.sqlite)
            else:
                clause = expression.between(low, high)
        return not_(clause) if node.negate else clause

    def _match(self, node: Match):
        def predicate(col):
            if node.glob:
                return _glob(col, node.pattern, self.sqlite)
            if not self.sqlite:  # a backslash is a character, as on SQLite (PostgreSQL's LIKE escapes with it)
                return col.ilike(node.pattern, escape="")
            if node.pattern.isascii():  # SQLite's lower() and LIKE fold ASCII letters only
                return col.ilike(node.pattern)
            return func.obsarch_lower(col).like(func.obsarch_lower(literal(node.pattern)))  # archive.db registers it

        if (definition := self._set_def(node.field)) is not None:
            clause = self._member(definition, predicate)
            return not_(clause) if node.negate else clause
        if isinstance(node.field, Header):
            if node.negate:  # some card that does not match, as !=
                return self._header(node.field, lambda col: not_(predicate(col)), "text")
            clause = self._header(node.field, predicate, "text")
        else:
            expression, kind = self._expression(node.field)
            if kind != "text":  # SQLite would match the number's text form, PostgreSQL refuse the operator
                raise SelectionError(f"{_label(node.field)} is {'a number' if kind == 'number' else 'a time'}: "
                                     f"{'glob' if node.glob else 'like'} matches text; compare it with ==, <, > or between")
            clause = predicate(expression)
        return not_(clause) if node.negate else clause

    def _isnull(self, node: IsNull):
        if (definition := self._set_def(node.field)) is not None:
            has = self._member(definition, lambda v: v.is_not(None))
            return has if node.negate else not_(has)
        if isinstance(node.field, Header):
            branches = [[text(NUMERIC)], [text(SHORT_TEXT)], [text(LONG_TEXT)]]
            has = Exposure.id.in_(self._union(node.field, branches))
            return has if node.negate else not_(has)
        expression, _ = self._expression(node.field)
        return expression.is_not(None) if node.negate else expression.is_(None)

    # helpers

    def _expression(self, field: Field) -> tuple[ColumnElement, str]:
        if self._set_def(field) is not None:
            raise SelectionError(f"{field.name} is a set (an exposure may have several); compare it with ==, in, like or is null")
        if isinstance(field, Call):
            inner, kind = self._expression(field.argument)
            if kind != "number":
                raise SelectionError(f"abs() needs a number, {_label(field.argument)} is {kind}")
            return func.abs(inner), "number"
        if isinstance(field, Header):
            raise SelectionError(f"{field.label} cannot be used inside a function")
        definition = _field_def(field)
        self.tables.update(definition.tables)
        return definition.expression(), definition.kind

    def _coerce(self, field: Field, kind: str, value, equality: bool = True):
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SelectionError(f"{_label(field)} is a number; compare it with a number, not {value!r}")
        if kind == "text" and not isinstance(value, str):
            raise SelectionError(f"{_label(field)} is text; compare it with a quoted string, not {value!r}")
        if kind == "number":
            return int_param(value)
        if kind == "text" and isinstance(field, Column):
            _check_value(field.name, value, equality)
        if kind == "datetime":
            parsed = parse_fits_date(value) if isinstance(value, str) else None
            if parsed is None:
                raise SelectionError(
                    f"{_label(field)} is a time; compare it with a quoted ISO date such as '2017-08-16T03:00', not {value!r}"
                )
            if not isinstance(parsed, datetime):
                return datetime(parsed.year, parsed.month, parsed.day)
            return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed
        return value

    def _cards(self, header: Header, *conditions):
        where = [HeaderCard.keyword == header.keyword, *conditions]
        if header.hdu is not None:
            where.append(HeaderCard.hdu_index == int_param(header.hdu))
        return select(HeaderCard.file_id).where(*where)

    def _header(self, header: Header, predicate, kind: str, short_literals: bool = False,
                item: Compare | Between | None = None, equality: bool = False) -> ColumnElement:
        """Files with a card ``header`` whose value satisfies ``predicate``.

        Numbers compare with numeric cards (logicals as 1/0), strings with the
        text of the others; each branch repeats the predicate of one partial
        index so that it is an index range on both backends (a text range on
        PostgreSQL, in byte order, ranges over the keyword only: see
        :func:`byte_order`).

        The clause is ``id IN (the cards' file ids)``. SQLite makes that list
        before it looks at exposures (PostgreSQL merges or hashes it, as its
        statistics say), so for a value a third of a million files share it
        builds a third of a million entries to keep the 36,000 exposures of
        one night. When ``item`` (the tree's node of this clause) may be
        merged (see :func:`ids_statement`) and the selection's AND has an
        indexed equality, the cards are counted (bounded):

        - an equality (an index seek on keyword, value and file id) whose
          AND's indexed equality picks fewer exposures than twice the value's
          cards, and fewer than DRIVING_ROWS_CAP, is tested exposure by
          exposure: ``EXISTS (its card)``, a seek each where the list costs
          an insert and a seek per card;
        - any item with more than DRIVING_ROWS_CAP / 2 cards is recorded in
          ``self.merge``: ids_statement intersects its cards with the rest.
          For a range, ``band == 'V' and hdr['CCD-TEMP'] < -25`` over
          1,000,000 exposures (250,000 cards), sorting the cards' file ids
          for the merge took 163 ms where the list took 317 ms, and 290
          where it took 912 at 500,000 cards; at 25,000 the two are even.

        The same rows either way.

        A promoted keyword (:mod:`archive.promoted`) compared with a value
        of its column's kind, on any HDU, is its column instead: one index
        range with the rest of the AND. ``IS NOT NULL`` keeps the clause
        true or false, as the cards' ``IN`` is, so that a NOT of it keeps
        the exposures without the card.
        """
        if kind == "bool":
            branches = [[text(NUMERIC), HeaderCard.vtype == "b", predicate(HeaderCard.value_num)]]
        elif kind in ("number", "integer"):
            branches = [[text(NUMERIC), predicate(HeaderCard.value_num)]]
        else:
            branches = [[text(SHORT_TEXT), predicate(HeaderCard.value_text)]]
            if not short_literals:  # a pattern or range may match a long value
                branches.append([text(LONG_TEXT), predicate(HeaderCard.value_text)])
        self._matched(header, branches)
        if (column := self._promoted(header, kind)) is not None:
            matched = predicate(column)
            if self.sqlite:
                # SQLite has no histograms: it takes a one-sided range to keep a quarter of the rows, and
                # chose (band, id) and a row lookup each over (band, column, id) for hdr['OBSERVER'] >= 'kim'
                # and band == 'V' (1,000,000 exposures: 130 ms, 3 ms with the hint); unlikely() is a hint
                # only, the condition's value and its use of the index unchanged
                matched = func.unlikely(matched)
            return and_(column.is_not(None), matched)
        if item is not None and self.driving and len(branches) == 1:
            cards = self._cards(header, *branches[0])
            # the counts read a few times the cards the list itself would read, at most
            n_cards = _count(self.conn, cards, DRIVING_ROWS_CAP // 2 + 1)
            cap = min(DRIVING_ROWS_CAP, 2 * n_cards)
            if equality and min(_count(self.conn, select(Exposure.id).where(clause), cap) for clause in self.driving) < cap:
                return cards.where(HeaderCard.file_id == Exposure.id).correlate(Exposure).exists()
            if n_cards > DRIVING_ROWS_CAP // 2 and kind != "bool":  # many cards: ids_statement merges them
                self.merge.append((item, cards))  # (a logical's cards need vtype, which no index holds)
        return Exposure.id.in_(self._union(header, branches))

    def _promoted(self, header: Header, kind: str) -> ColumnElement | None:
        if header.hdu is not None or kind not in ("number", "text") or self.reader is None:
            return None
        if self.promoted is None:
            from archive.promoted import promotions

            self.promoted = promotions(self.reader)
        found = self.promoted.get(header.keyword)
        if found is None or found.kind != kind:
            return None
        return literal_column(f"exposures.{found.column}", Float if kind == "number" else Text)

    def _union(self, header: Header, branches: list[list]):
        selects = [self._cards(header, *conditions) for conditions in branches]
        return selects[0] if len(selects) == 1 else union_all(*selects)


_NIGHT = re.compile(r"\d{4}-\d{2}-\d{2}")
_NIGHT_PREFIX = re.compile(r"\d{4}(-(0[1-9]|1[0-2])(-\d{2})?)?")  # what an order on nights' text can be given: 2017, 2017-08


def _check_value(name: str, value: str, equality: bool = True) -> None:
    """Refuse a value ``name`` can never hold: one outside its fixed
    vocabulary (``grade == 'bda'``), a night that is not a date in an
    equality (``night == '2017-13-45'``), or in an order a date or the
    start of one (``night >= '2017-08'`` compares text: ``'2017-8-01'``
    would come after every night of 2017). Such a selection would match
    nothing, or the wrong nights, and look like an answer."""
    allowed = FIELDS[name].values if name in FIELDS else ()
    if allowed and value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1) or [a for a in allowed if _abbreviates(value, a)][:1]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SelectionError(f"{name} is one of {', '.join(allowed)}: not {value!r}{hint}")
    if name == "night" and equality:
        try:
            if not _NIGHT.fullmatch(value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            raise SelectionError(f"night is a date written YYYY-MM-DD (the evening's date): {value!r} is not one") from None
    if name == "night" and not equality:
        try:
            if not _NIGHT_PREFIX.fullmatch(value):
                raise ValueError
            if len(value) == 10:
                date.fromisoformat(value)
        except ValueError:
            raise SelectionError(f"night is compared as its text YYYY-MM-DD (the evening's date), or from a start of it "
                                 f"(2017, 2017-08): {value!r} is neither") from None


def _abbreviates(short: str, word: str) -> bool:
    """``short`` is ``word`` with letters left out, its first kept (bkg, background)."""
    letters = iter(word.lower())
    return len(short) > 1 and short[:1].lower() == word[:1].lower() and all(c in letters for c in short.lower())


def _indexed_equality(node) -> bool:
    """``column == value`` or ``column in (values)`` on an indexed exposure column."""
    if isinstance(node, Compare):
        equality = node.op == "==" and node.value is not None
    elif isinstance(node, In):
        equality = not node.negate and len(node.values) <= MAX_IN_PARAMETERS
    else:
        return False
    return equality and isinstance(node.field, Column) and node.field.name in INDEXED_COLUMNS


def merges_sorted_ranges(node) -> bool:
    """Whether the selection's AND pairs a keyword equality with an equality
    on an indexed exposure column: two index ranges already in id order
    (migration 0014), which PostgreSQL merges. Its parallel plan for that
    merge gives each worker a share of the exposures but the whole of the
    value's cards, so it reads them once per process: over 1,000,000
    exposures ``hdr['OBSERVER'] == 'eve' and band == 'V'`` took 202-208 ms
    with two workers, 72-122 ms in one process (benchmarks/ingest.py's
    catalog, same minutes). :class:`archive.catalog.Catalog` runs such a
    selection without parallel workers."""
    if not (isinstance(node, BoolOp) and node.op == "and"):
        return False
    keyword = any(isinstance(item, Compare) and item.op == "==" and isinstance(item.field, Header)
                  and item.value is not None for item in node.items)
    return keyword and any(_indexed_equality(item) for item in node.items)


def _count(conn, statement: Select, cap: int) -> int:
    """The rows of ``statement``, counted up to ``cap``."""
    return conn.execute(select(func.count()).select_from(statement.limit(cap).subquery())).scalar_one()


def is_raw_frame() -> ColumnElement:
    """Whether an exposure is a camera's frame: its file is no product of a
    run (a master, a calibrated frame, a stack). The frames ``obsarch
    summary`` and the web app's nights count, and the ones a frame number
    names (as ``product is null`` selects them)."""
    return Exposure.file_id.not_in(select(Product.file_id).where(Product.file_id.is_not(None)))


def _frame_condition(node: Frames, sqlite: bool) -> ColumnElement:
    singles = [low for low, high in node.ranges if low == high]
    parts = [Exposure.frame_number.between(low, high) for low, high in node.ranges if low != high]
    if singles:
        parts.append(_in_values(Exposure.frame_number, singles, sqlite))
    return _balanced(or_, parts)


def shared_frames(conn, node: Node | None) -> list[tuple[int, int, list[str]]]:
    """Frame numbers of the tree that more than one raw exposure the tree
    picks holds: (frame number, how many exposures, [instrument, ...]),
    lowest first. Shared by several instruments, a number names no one
    frame to any command (:func:`processing.steps.refuse_ambiguous_frames`);
    by one (a night ingested from two copies), none to judge (``flag set``)."""
    terms = frame_ranges(node)
    if not terms:
        return []
    # what the whole selection picks (joined to files and roots when it names
    # a path: a bare WHERE left them out), among the raw frames it numbers
    sqlite = conn.dialect.name == "sqlite"
    picked = select_exposures(node, conn.dialect.name, Exposure.frame_number, Exposure.instrument).where(
        or_(*[_frame_condition(term, sqlite) for term in terms]), is_raw_frame()).subquery()
    shared = select(picked.c.frame_number).group_by(picked.c.frame_number).having(func.count() > 1)
    instrument = func.coalesce(picked.c.instrument, "(no instrument)")
    rows = conn.execute(select(picked.c.frame_number, instrument, func.count()).where(picked.c.frame_number.in_(shared))
                        .group_by(picked.c.frame_number, instrument)).all()
    found: dict[int, dict[str, int]] = {}
    for number, name, count in rows:
        found.setdefault(int(number), {})[name] = count
    return [(number, sum(counts.values()), sorted(counts)) for number, counts in sorted(found.items())]


def _same_integer(number: ColumnElement, values: list[int], sqlite: bool) -> ColumnElement:
    """A card holding one of the integers ``values``, beyond what a double
    tells apart: its double (an index range) and the digits it was written
    with (5853498713190525697 and ...696 are one double; a Gaia source id is
    one of them). The digits name the integer, so the two lists need no
    pairing, and a long list is one parameter each (:func:`_in_values`)."""
    written = HeaderCard.value_text
    # the digits without a sign's + or leading zeros (09007199254740993 is 9007199254740993, as astropy reads it)
    digits = case((written.startswith("-"), "-" + func.ltrim(func.substr(written, 2), "0")), else_=func.ltrim(written, "+0"))
    return and_(_in_values(number, [float(v) for v in values], sqlite), HeaderCard.vtype == "i",
                _in_values(digits, [str(v) for v in values], sqlite))


def _card_value(value):
    """Logicals are stored as 1/0 in value_num."""
    return float(value) if isinstance(value, bool) else value


def _short(value) -> bool:
    return isinstance(value, str) and len(value) <= TEXT_INDEX_LIMIT


EXACT_INTEGER = 2**53  # a card's number is a double: every integer below this, and only some from it on


def _value_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int) and abs(value) >= EXACT_INTEGER:  # 2**53 + 1 is kept as 2**53
        return "integer"  # compared by the card's digits too (see _same_integer)
    if isinstance(value, (int, float)):
        return "number"
    return "text"


def _inexact(field: Field, value: int, op: str) -> str:
    return (f"{value} is beyond 2**53 ({EXACT_INTEGER}), the last integer the doubles a header's numbers are kept in all "
            f"hold: {op} would compare {_label(field)} with a neighbour; ==, != and in compare it exactly, by its digits")


def _label(field: Field) -> str:
    if isinstance(field, Header):
        return field.label
    if isinstance(field, Call):
        return f"{field.function}({_label(field.argument)})"
    return field.name


def value_hints(conn, node: Node | None) -> list[str]:
    """Why a selection may have matched nothing: each value it asks an
    indexed text column (band, night, instrument...), a group name or a
    name with stored values (xray_filter) to equal that no exposure has,
    with the stored value it resembles most (``frame_type == 'sceince'``:
    did you mean 'science'?); each header keyword it tests that no file has
    (``hdr['EXPTIM']``: did you mean EXPTIME?), or that holds only numbers
    where it asks for text, or only text where it asks for a number. A typo
    then does not pass for an empty answer. One index seek per value and
    keyword; the stored values, or the keywords, are read only for one not
    found."""
    asked: list[tuple[str, str]] = []
    headers: list[tuple[Header, set[str]]] = []  # a keyword and the kinds of value it is compared with

    def walk(item):
        if isinstance(item, BoolOp):
            for sub in item.items:
                walk(sub)
        elif getattr(item, "negate", False) and not isinstance(item, IsNull):
            return  # asking for its absence is no typo
        elif isinstance(getattr(item, "field", None), Header):
            _asked_kinds(item, headers)
        elif isinstance(item, Compare | In) and isinstance(item.field, Column):
            values = item.values if isinstance(item, In) else (item.value,) if item.op == "==" else ()
            name = item.field.name
            if _stored_values(name) is not None:
                asked.extend((name, v) for v in values if isinstance(v, str) and (name, v) not in asked)

    walk(node)
    hints = [hint for name, value in asked[:20] if (hint := _value_hint(conn, name, value))]
    return hints + [hint for header, kinds in headers[:20] if (hint := _keyword_hint(conn, header, kinds))]


def _stored_values(name: str) -> Select | None:
    """A SELECT of the values ``name`` holds, cheap to read; None for a name that has none."""
    if name == "group":
        return select(Group.name)
    if (name in INDEXED_COLUMNS or name == "object") and FIELDS[name].kind == "text":  # object: a scan, on an empty answer only
        return select(getattr(Exposure, name))
    stored = FIELDS[name].stored if name in FIELDS else None
    return stored() if stored is not None else None


def _value_hint(conn, name: str, value: str) -> str | None:
    values = _stored_values(name).subquery()
    column = values.columns[0]
    if conn.execute(select(column).where(column == value).limit(1)).first() is not None:
        return None
    stored = [v for (v,) in conn.execute(select(column).distinct().where(column.is_not(None)).limit(10_000))]
    if name == "night" and (nearest := _nearest_night(value, stored)):
        return f"no exposure has night {value!r}; the nearest night with exposures is {nearest!r}"
    def plain(text: str) -> str:  # 'ngc 3293' is 'NGC3293' but for case and spaces
        return "".join(str(text).casefold().split())

    close = [v for v in stored if plain(v) == plain(value)][:1] or difflib.get_close_matches(value, stored, n=1, cutoff=0.6)
    known = f"; did you mean {close[0]!r}?" if close else (f" (it has {', '.join(map(repr, sorted(stored)[:8]))}"
                                                            f"{', ...' if len(stored) > 8 else ''})" if stored else "")
    return f"no {'group is named' if name == 'group' else f'exposure has {name}'} {value!r}{known}"


def _nearest_night(value: str, stored: list[str]) -> str | None:
    """The stored night nearest in time to ``value`` (a date): '2014-07-27'
    resembles '2018-07-27' more as text than '2014-08-02', which is nearer.
    None when ``value`` is no date (a typo: the text match answers)."""
    try:
        asked = date.fromisoformat(value)
    except ValueError:
        return None
    dates = {}
    for night in stored:
        try:
            dates[night] = abs((date.fromisoformat(night) - asked).days)
        except ValueError:
            continue
    return min(dates, key=lambda night: (dates[night], night)) if dates else None


def _asked_kinds(item, headers: list[tuple[Header, set[str]]]) -> None:
    """Record the keyword ``item`` tests, with the kinds (number, text) of the values it compares it with."""
    if isinstance(item, Compare):
        values = () if item.value is None else (item.value,)
    elif isinstance(item, In):
        values = item.values
    elif isinstance(item, Between):
        values = (item.low, item.high)
    elif isinstance(item, Match):
        values = (item.pattern,)
    else:
        values = ()  # is null: a keyword asked to be absent is no typo; is not null: asked to be there
        if not item.negate:
            return
    key = Header(item.field.keyword, item.field.hdu)
    kinds = next((k for h, k in headers if h == key), None)
    if kinds is None:
        headers.append((key, kinds := set()))
    kinds.update("text" if isinstance(v, str) else "number" for v in values)


_CARD_KINDS = {"number": (NUMERIC,), "text": (SHORT_TEXT, LONG_TEXT)}  # each one of HeaderCard's partial indexes


def _has_cards(conn, keyword: str, kind: str) -> bool:
    """Whether any file has a card ``keyword`` holding a value of ``kind``: a seek in a partial index each."""
    return any(conn.execute(select(HeaderCard.file_id).where(HeaderCard.keyword == keyword, text(partial)).limit(1)).first()
               for partial in _CARD_KINDS[kind])


def keyword_hints(conn, headers: list[Header]) -> list[str]:
    """Of the header keywords ``headers``, each that no file has, with the nearest one that some file has."""
    return [hint for header in headers[:20] if (hint := _keyword_hint(conn, header, set()))]


def _keyword_hint(conn, header: Header, kinds: set[str]) -> str | None:
    """Why a test of ``header`` with values of ``kinds`` may have found nothing
    (the keyword is in any HDU: a keyword no HDU has is in none)."""
    has = {kind for kind in _CARD_KINDS if _has_cards(conn, header.keyword, kind)}
    if not has:
        close = difflib.get_close_matches(header.keyword, _keywords(conn), n=1, cutoff=0.75)
        return f"no file has a value for header keyword {header.keyword}" + (f"; did you mean {close[0]}?" if close else "")
    if len(kinds) == 1 and not kinds & has:
        (other,) = has
        if other == "number" and not conn.execute(select(HeaderCard.file_id).where(
                HeaderCard.keyword == header.keyword, text(NUMERIC), HeaderCard.vtype != "b").limit(1)).first():
            return f"{header.label} is a logical (T or F) in every file that has it: compare it with true or false"
        with_ = "a number" if other == "number" else "a quoted string"
        return f"{header.label} is {'a number' if other == 'number' else 'text'} in every file that has it: compare it with {with_}"
    return None


def _keywords(conn, cap: int = 10_000) -> list[str]:
    """The distinct keywords of the cards that hold a value: one seek per
    keyword in each partial index (a loose index scan), not a read of every card."""
    found: set[str] = set()
    for partial in (NUMERIC, SHORT_TEXT, LONG_TEXT):
        # only constants of the code in this text; no value of the user
        found.update(k for (k,) in conn.execute(text(
            "WITH RECURSIVE k(keyword) AS ("
            f" SELECT min(keyword) FROM header_cards WHERE {partial}"
            " UNION ALL"
            f" SELECT (SELECT min(h.keyword) FROM header_cards h WHERE h.keyword > k.keyword AND {partial})"
            " FROM k WHERE k.keyword IS NOT NULL"
            ") SELECT keyword FROM k WHERE keyword IS NOT NULL LIMIT :cap"), {"cap": cap}))
    return sorted(found)


# -- building queries --------------------------------------------------------

DEFAULT_COLUMNS = ("id", "frame_number", "path", "frame_type", "band", "exptime", "date_obs", "object", "instrument")


def base_select(*columns, tables: set[str] | tuple[str, ...] = ("files", "roots")) -> Select:
    """SELECT ... FROM exposures, joined to files and roots where ``tables`` says."""
    statement = select(*columns).select_from(Exposure)
    if "files" in tables or "roots" in tables:
        statement = statement.join(File, File.id == Exposure.file_id)
    if "roots" in tables:
        statement = statement.join(Root, Root.id == File.root_id)
    return statement


def select_exposures(selection: str | Node | None, dialect: str, *columns, conn=None, compiler: Compiler | None = None) -> Select:
    """SELECT exposures.id (and ``columns``) WHERE the selection (a person's
    text or a tree) holds, joined to files and roots only when the selection
    or the columns need them. ``conn``: the connection it will run on, when
    the compiler may count rows to choose a shape (see :class:`Compiler`);
    ``compiler``: the one to use, to read its choices after."""
    compiler = compiler or Compiler(dialect, conn)
    node = as_tree(selection)
    with naming("selection", selection):
        where = compiler.root(node) if node is not None else None
    tables = set(compiler.tables)
    if any(getattr(c, "table", None) is not None and c.table.name in ("files", "roots") for c in columns):
        tables |= {"files", "roots"}
    statement = base_select(Exposure.id, *columns, tables=tables)
    return statement if where is None else statement.where(where)


def ids_statement(selection: str | Node | None, dialect: str, conn=None):
    """SELECT the ids of the exposures the selection picks, in id order (what
    :meth:`archive.catalog.Catalog.exposure_ids` runs).

    On SQLite, when the compiler found that a keyword's condition in the
    selection's AND picks many cards beside an indexed equality (an equality
    whose column picks many exposures too, ``hdr['OBSERVER'] == 'eve' and
    band == 'V'``, 330,000 cards and 200,000 exposures of 1,000,000; or a
    range, ``band == 'V' and hdr['CCD-TEMP'] < -25``), the ids are

        SELECT id FROM exposures WHERE <the rest of the AND>
        INTERSECT SELECT file_id FROM header_cards WHERE <the value's cards>
        ORDER BY id

    which SQLite runs as a merge of two index ranges (its plan says MERGE
    (INTERSECT)): an equality's cards are already in id order, 44-90 ms
    there where the list of the value's files took 140-300 ms; a range's are
    sorted first (see :meth:`Compiler._header`). SQLite merges only a
    compound at the top of a statement, so only the ids get this shape."""
    node = as_tree(selection)
    compiler = Compiler(dialect, conn)
    with naming("selection", selection):
        plain = select_exposures(node, dialect, compiler=compiler).order_by(Exposure.id)
    # the conditions that are items of the root AND (one under a NOT or an OR is no intersection)
    merged = [(seek, cards) for seek, cards in compiler.merge
              if isinstance(node, BoolOp) and node.op == "and" and any(seek is item for item in node.items)]
    if not merged:
        return plain
    rest = [item for item in node.items if all(item is not seek for seek, _ in merged)]
    left = select_exposures(rest[0] if len(rest) == 1 else BoolOp("and", tuple(rest)), dialect)
    compound = intersect(left, *(cards for _, cards in merged))
    return compound.order_by(compound.selected_columns[0])


def header_columns(node) -> list[Header]:
    """The header keywords a selection mentions, in order, once each."""
    found: list[Header] = []

    def walk(item):
        if isinstance(item, BoolOp):
            for sub in item.items:
                walk(sub)
        elif isinstance(item, Not):
            walk(item.item)
        elif isinstance(getattr(item, "field", None), Header) and item.field not in found:
            found.append(Header(item.field.keyword, item.field.hdu))

    walk(node)
    return found


def column_expressions(field: Field, compiler: Compiler, exact: bool = False) -> list[tuple[str, ColumnElement]]:
    """(label, expression) pairs that show ``field`` as a result column.

    A header keyword gives two: its number and its text (the first card with
    that keyword, primary HDU first); they are merged after fetching. A
    keyword the selection compiled by ``compiler`` asks a value of (outside
    any NOT) shows the first card that has it: with FILTER V in the primary
    HDU and R in the first extension, ``hdr['FILTER'] == 'R'`` showed V.
    ``exact``: a third, between them, for sorting: an integer card's exact
    value, which tells apart integers beyond 2**53 that share a double.
    """
    if isinstance(field, Header):
        where = [HeaderCard.file_id == Exposure.id, HeaderCard.keyword == field.keyword]
        if field.hdu is not None:
            where.append(HeaderCard.hdu_index == int_param(field.hdu))
        order = [HeaderCard.hdu_index, HeaderCard.position]
        if matched := compiler.matched.get(field.keyword):
            order.insert(0, case((or_(*matched), 0), else_=1))

        def first(column):
            return (
                select(column).where(*where).order_by(*order)
                .limit(1).correlate(Exposure).scalar_subquery()
            )

        pairs = [(f"{field.label}#num", first(HeaderCard.value_num)), (f"{field.label}#text", first(HeaderCard.value_text))]
        if exact:  # SQLite's integers are 64 bits, PostgreSQL's numeric any size; the digits as written (+, 0...)
            whole = cast(HeaderCard.value_text, BigInteger if compiler.sqlite else Numeric)
            pairs.insert(1, (f"{field.label}#exact", first(case((HeaderCard.vtype == "i", whole)))))
        return pairs
    expression, _ = compiler._expression(field)
    return [(_label(field), expression)]


def sort_expressions(sort: str, compiler: Compiler) -> list[ColumnElement]:
    """``-exptime,date_obs`` -> ORDER BY expressions (``-`` for descending,
    empty values last). A header keyword sorts by its number, then by its
    text: a text keyword has no number, and was left unsorted; integers that
    share a double by their exact value between the two (-9007199254740995
    sorted before -...996 by its text)."""
    result = []
    for field, descending in parse_sort(sort):
        with naming("sort", sort):
            expressions = column_expressions(field, compiler, exact=True)
        kind = None if isinstance(field, Header) else compiler._expression(field)[1]  # a card's text is its String column
        for _, expression in expressions:
            if (kind == "text" or kind is None and isinstance(expression.type, String)) and not _ordered_alike(field):
                expression = byte_order(expression, compiler.sqlite)
            # empty values last either way, on both backends (SQLite puts NULL first, PostgreSQL last)
            result.append((expression.desc() if descending else expression.asc()).nulls_last())
    return result

