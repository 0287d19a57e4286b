"""The Typer app, its command groups, the global state, error handling and the
options shared by several commands (declared once, here)."""

from __future__ import annotations

import enum
import functools
import math
import sys
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from archive import __version__
from archive.exceptions import ObsarchError, UsageError
from cli.render import Format, err_console, reader_gone, silence_stdout

PANELS = {
    "catalog": "Catalog",
    "quality": "Quality",
    "groups": "Groups and offsets",
    "processing": "Processing",
    "archives": "Archives",
    "admin": "Administration",
}


# Within a panel, the order of a night's work; commands not named here follow.
ORDER = ["ingest", "query", "show", "summary", "errors", "sql", "quality", "flag", "report", "group", "offsets", "align",
         "calib", "calibrate", "stack", "run", "xray", "runs", "products", "lineage", "stale",
         "archive", "fetch", "downloads", "sync", "init", "demo", "db", "roots"]


def _placeholder(param) -> str | None:
    """What an option takes, as a word (no ``<bool>``, ``<list[Path]>``):
    nothing for a flag, the choices of a choice, else PATH, N, NUMBER or TEXT."""
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    if getattr(param, "is_flag", False) or annotation is bool:
        return None
    if desc is not None and desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    if desc is not None and desc.is_list:
        annotation = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
    word = "PATH" if desc is not None and desc.is_path else {int: "N", float: "NUMBER"}.get(annotation, "TEXT")
    return word + ("..." if desc is not None and desc.is_list else "")


def _light_runtime_param(param):
    """A value converter for plain types (text, numbers within min/max, flags,
    paths, an enum, a list of one of these), or None for anything else.

    Typer (0.2x) converts every value through a pydantic TypeAdapter, and
    importing pydantic and building the adapters was a third of a short
    command's start-up; these types need no more than a call to the type.
    """
    try:
        from typer._coercion import RuntimeParam
    except ImportError:  # another typer: its own conversion stands
        return None
    desc = param.type_descriptor
    info = desc.parameter_info
    element = typing.get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    plain = element in (str, int, float, bool, Path) or (isinstance(element, type) and issubclass(element, enum.Enum))
    constrained = any(getattr(info, name, None) not in (None, False)
                      for name in ("parser", "exists", "resolve_path", "click_type", "clamp"))
    bounded = info.min is not None or info.max is not None  # "is not None": min=0 is a bound too
    if not plain or constrained or (bounded and element not in (int, float)) or desc.is_tuple \
            or desc.file_annotation is not None:
        return None
    bounds = (info.min, info.max)

    class Light(RuntimeParam):
        def _coerce_value(self, value, param, ctx):
            if isinstance(value, (list, tuple)):
                return [_convert(element, item, param, ctx, bounds) for item in value]
            return _convert(element, value, param, ctx, bounds)

    return Light(parameter_info=info, annotation=desc.annotation)


def _convert(kind, value, param, ctx, bounds=(None, None)):
    from typer._click.exceptions import BadParameter

    if not isinstance(value, kind) or kind is int and isinstance(value, bool):
        value = _convert_text(kind, value, param, ctx)
    low, high = bounds
    if low is not None and value < low:
        raise BadParameter(f"{value!r} is below {low}.", ctx=ctx, param=param)
    if high is not None and value > high:
        raise BadParameter(f"{value!r} is above {high}.", ctx=ctx, param=param)
    return value


def _convert_text(kind, value, param, ctx):
    from typer._click.exceptions import BadParameter

    if kind is bool:
        return str(value).lower() in ("1", "true", "yes", "on")
    try:
        return kind(value)
    except ValueError:
        if issubclass(kind, enum.Enum):
            choices = ", ".join(repr(c.value) for c in kind)
            raise BadParameter(f"{value!r} is not one of {choices}.", ctx=ctx, param=param) from None
        word = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise BadParameter(f"{value!r} is not {word}.", ctx=ctx, param=param) from None


class _Option(TyperOption):
    def display_type_rich(self, ctx) -> str | None:
        return _placeholder(self)

    def get_runtime_param(self):
        if getattr(self, "_runtime_param", None) is None:
            self._runtime_param = _light_runtime_param(self) or super().get_runtime_param()
        return self._runtime_param


class _Argument(TyperArgument):
    def display_type_rich(self, ctx) -> str | None:
        return None  # the argument's name says it

    get_runtime_param = _Option.get_runtime_param


def _plain(params: list) -> list:
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _Option
        elif type(param) is TyperArgument:
            param.__class__ = _Argument
    return params


def _is_text(arg: str) -> bool:
    """Whether a word that begins with a dash is text, not an option: an
    option's name (before any ``=``) holds no space or line break, and a SQL
    statement that begins with a comment (``-- note\nselect 1``) does."""
    return any(c.isspace() for c in arg.split("=", 1)[0])


@functools.cache
def _text_aware(parser_class: type) -> type:
    class TextAwareParser(parser_class):
        """Click's parser, reading a dashed word that is text (:func:`_is_text`) as an argument."""

        def _process_opts(self, arg, state):
            if _is_text(arg):
                state.largs.append(arg)
            else:
                super()._process_opts(arg, state)

    return TextAwareParser


class Command(TyperCommand):
    """A command whose help shows words, not Python types. For a command that
    takes extra arguments (``run ... -- tool ARGS``), everything after ``--``
    is an extra argument: click would give its first word to an optional
    argument left empty (``run --each obsid -- ls`` read ``ls`` as the selection).
    A word that begins with a dash but holds a space or a line break is an
    argument: ``obsarch sql "-- note\nselect 1"`` was "no such option"."""

    def get_params(self, ctx):
        return _plain(super().get_params(ctx))

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        if hasattr(parser, "_process_opts"):  # another click: its own parsing stands (`--` still works)
            parser.__class__ = _text_aware(type(parser))
        return parser

    def parse_args(self, ctx, args):
        if not (ctx.allow_extra_args and "--" in args):
            return super().parse_args(ctx, args)
        cut = args.index("--")
        super().parse_args(ctx, args[:cut])
        ctx.args = [*ctx.args, *args[cut + 1:]]
        return ctx.args


class Group(TyperGroup):
    """A command group whose help shows words, not Python types; with
    ``default`` set, arguments that name none of its commands go to that one
    (``obsarch flag 3920 --grade bad`` is ``obsarch flag set 3920 ...``)."""

    default: str | None = None

    def get_params(self, ctx):
        return _plain(super().get_params(ctx))

    def list_commands(self, ctx) -> list[str]:
        panels = list(PANELS.values())
        names = super().list_commands(ctx)
        panel = {n: getattr(self.commands[n], "rich_help_panel", None) for n in names}
        if not any(panel.values()):  # a command group: the order its commands were made in
            return names

        def place(name):
            return (panels.index(panel[name]) if panel[name] in panels else len(panels),
                    ORDER.index(name) if name in ORDER else len(ORDER))

        return sorted(names, key=place)

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is not None:
            return super().make_context(info_name, args, parent, **extra)
        with _plain_endings():  # the app's own options: `obsarch --db` with no URL
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        if ctx.parent is not None:
            return super().invoke(ctx)
        with _plain_endings():  # every command runs in here
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
            return result

    def resolve_command(self, ctx, args):
        if self.default and args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().resolve_command(ctx, args)


@contextmanager
def _plain_endings():
    """The one place where a run that is not a command's success or error
    ends: a usage error as one line, exit 2 (Typer would draw a box of
    five); a reader that went away downstream (``obsarch query | head``)
    as a quiet exit 0, whichever command was writing."""
    from typer._click.exceptions import ClickException

    try:
        yield
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help is the answer (Typer printed it)
            raise
        fail(_usage_line(exc), code=exc.exit_code)
    except BrokenPipeError as exc:
        if not reader_gone():
            _reported(exc)
        silence_stdout()
        raise typer.Exit(0) from None
    except SystemExit as exc:
        # rich's own Console (Typer's help), which writes to stdout and stderr
        # only, ends a closed pipe with exit 1 (Console.on_broken_pipe, which
        # has sent stdout to /dev/null already: reader_gone cannot tell now)
        if exc.code == 1 and isinstance(exc.__context__, BrokenPipeError):
            raise typer.Exit(0) from None
        raise


def _usage_line(exc) -> str:
    """Click's message, as obsarch writes one (lower case, no full stop),
    with where to read more."""
    message = exc.format_message().strip().rstrip(".")
    if message[:1].isupper() and message[1:2].islower():  # "Invalid value", not "FITS"
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    name, root = getattr(exc, "option_name", None), ctx.find_root()
    if name and ctx is not root and any(name in param.opts for param in root.command.params):
        # `obsarch summary --db URL`: the app's own option, given after the command
        command = ctx.command_path.removeprefix(f"{root.command_path} ")
        return f"{command} has no option {name}: it is obsarch's own, given before the command ({root.command_path} {name} ... {command})"
    return f"{message} (see {ctx.command_path} --help)"


def group(help: str | None, default: str | None = None, no_args_is_help: bool = True) -> typer.Typer:
    """A command group (a Typer app) with obsarch's help conventions."""
    cls = type("DefaultGroup", (Group,), {"default": default}) if default else Group
    given = {} if help is None else {"help": help}  # none given: typer takes the callback's docstring
    return typer.Typer(**given, no_args_is_help=no_args_is_help, cls=cls, rich_markup_mode="markdown")


app = typer.Typer(
    help="obsarch: a catalog of your observations (FITS headers, quality, groups, products) in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,
    rich_markup_mode="markdown",
)
db_app = group("The catalog's schema: upgrade, current, history.")
quality_app = group("Quality metrics of frames and the rules that flag them.")
flag_app = group("Quality flags: set a grade on frames, see a frame's history.", default="set")
flags_app = group("Old spelling of `obsarch flag`.")
report_app = group("Reports over the catalog.")
group_app = group("Groups of exposures: make them (by pointing, by header values, by hand), list them, show one.")
groups_app = group("Old spelling of `obsarch group`.")
offsets_app = group("Offsets of frames onto a reference: compute, show.")
align_app = group("Align source lists.")
calib_app = group("Calibration masters: bias, dark, flat.")
archive_app = group("Search the archives (HEASARC, ESO, MAST).")
roots_app = group("The directories the catalog's files live in.")
# no help of its own: `obsarch runs` lists runs, so its help is that of the callback (with its example)
runs_app = group(None, no_args_is_help=False)
app.add_typer(quality_app, name="quality", rich_help_panel=PANELS["quality"])
app.add_typer(flag_app, name="flag", rich_help_panel=PANELS["quality"])
app.add_typer(report_app, name="report", rich_help_panel=PANELS["quality"])
app.add_typer(group_app, name="group", rich_help_panel=PANELS["groups"])
app.add_typer(offsets_app, name="offsets", rich_help_panel=PANELS["groups"])
app.add_typer(align_app, name="align", rich_help_panel=PANELS["groups"])
app.add_typer(calib_app, name="calib", rich_help_panel=PANELS["processing"])
app.add_typer(runs_app, name="runs", rich_help_panel=PANELS["processing"])
app.add_typer(archive_app, name="archive", rich_help_panel=PANELS["archives"])
app.add_typer(db_app, name="db", rich_help_panel=PANELS["admin"])
app.add_typer(roots_app, name="roots", rich_help_panel=PANELS["admin"])
app.add_typer(flags_app, name="flags", hidden=True)
app.add_typer(groups_app, name="groups", hidden=True)


class _State:
    db: str | None = None
    config: Path | None = None
    debug: bool = False


STATE = _State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"obsarch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    database: Annotated[Optional[str], typer.Option("--db", help="Catalog URL (default: $OBSARCH_DB, else sqlite:///obsarch.db).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="obsarch.toml to use (default: $OBSARCH_CONFIG, else ./obsarch.toml).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    STATE.db, STATE.config, STATE.debug = database, config, debug


def _one_line(text: str) -> str:
    """A message as one printable line, whatever bytes it carries: a byte
    that is not UTF-8 (in a file name, or argv) as ``\\xff``."""
    line = " ".join(str(text).replace("\x00", "\\0").split())
    try:
        return line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return line.encode("utf-8", "backslashreplace").decode("utf-8")


def reports_errors(function):
    """Turn every error into one line on stderr: obsarch's own exit 1, an
    interrupt 130; anything unexpected also exits 1 with a pointer to
    --debug, which shows the traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = _engines()
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise  # usage errors and exits keep their own status
        except Exception as exc:
            if type(exc).__module__.startswith(("typer", "click")) and hasattr(exc, "exit_code"):
                raise  # click's usage errors (typer's own click, typer._click, and click itself, not imported for this)
            if isinstance(exc, BrokenPipeError) and reader_gone():
                raise  # not an error: ended once for every command (_plain_endings)
            _reported(exc)
        except KeyboardInterrupt:
            if STATE.debug:
                raise
            fail("interrupted; nothing half-written was kept", code=130)
        finally:
            _close_engines(keep=before)

    return wrapper


def _engines() -> set:
    """The catalog engines open now (none before archive.db is imported:
    commands that need no catalog do not import SQLAlchemy for this)."""
    db = sys.modules.get("archive.db")
    return set(db.ENGINES) if db else set()


def _close_engines(keep: set) -> None:
    """Close the connections of the engines a command opened: a process that
    runs several commands (the tests, a notebook) would otherwise leave each
    PostgreSQL connection open until the garbage collector found it."""
    db = sys.modules.get("archive.db")
    try:
        if db:
            db.dispose_engines(keep=keep)
    except KeyboardInterrupt:  # a Ctrl-C as the command ends: its one line, not a traceback from a socket's close
        fail("interrupted; nothing half-written was kept", code=130)
    finally:
        _OPENED.clear()


def _reported(exc: Exception) -> None:
    """obsarch's own errors as their one line; anything unexpected too (no
    traceback reaches a user); a usage error exits 2, the others 1, and
    --debug raises instead."""
    if STATE.debug:
        raise exc
    if isinstance(exc, UsageError):  # a selection, column or sort list, an option value the user typed: usage
        fail(str(exc), code=2)
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in str(exc.reason):  # bytes from argv or a file name
        shown = exc.object.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        fail(f"'{shown}' is not valid UTF-8 text: names, notes and values are stored as UTF-8", code=2)
    if isinstance(exc, ObsarchError):
        fail(str(exc))
    if isinstance(exc, OSError) and exc.filename is not None:  # a path the user gave, or one made of it
        fail(f"{exc.filename}: {exc.strerror or exc}")
    fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    err_console.print(f"error: {_one_line(message)}", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(code) from None


def command(parent: typer.Typer = app, name: str | None = None, *, panel: str | None = None, aliases=(), **settings):
    """Register a command on ``parent`` with obsarch's error handling.

    ``panel``: a key of :data:`PANELS` (top-level commands); ``aliases``:
    (group, name) pairs where an old spelling stays reachable, hidden.
    """

    def decorate(function):
        wrapped = reports_errors(function)
        for alias_parent, alias in aliases:
            alias_parent.command(alias, cls=Command, hidden=True, **settings)(wrapped)
        return parent.command(name, cls=Command, rich_help_panel=PANELS.get(panel, panel), **settings)(wrapped)

    return decorate


_OPENED: list = []  # the catalogs a command opened, alive until it ends and its engines are closed


def open_catalog():
    """The catalog named by --db (refused if it is missing or out of date);
    kept until the command ends, so that its engine is closed then, not left
    to the garbage collector when a command only checks it (sql)."""
    from archive.catalog import Catalog

    catalog = Catalog(STATE.db)
    _OPENED.append(catalog)
    return catalog


def load_config():
    """The configuration named by --config."""
    from archive.config import load_config as load

    return load(STATE.config)


@contextmanager
def progress(label: str):
    """A progress bar on stderr; yields the ``progress(done, total)`` callback steps take.

    Only on a terminal: rich draws a transient bar nowhere else, so a pipe or
    a file (scripts, cron) gets no bar and the command does not import rich."""
    if not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console.unwrap(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# -- options shared by several commands ----------------------------------------------

FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]
ColumnsOption = Annotated[Optional[str], typer.Option("--columns", help="Comma-separated columns to show, or all (a terminal shows the main ones).")]
Selection = Annotated[Optional[str], typer.Argument(help="Which exposures: a selection or frame numbers (default: all).")]
WorkersOption = Annotated[Optional[int], typer.Option(help="Processes working at once (default: all cores).")]
ExecutorOption = Annotated[str, typer.Option("--executor", help="pool (default), serial or dask.")]
SchedulerOption = Annotated[Optional[str], typer.Option(help="dask scheduler address, e.g. tcp://host:8786 (default: a local cluster).")]
ForceOption = Annotated[bool, typer.Option(help="Do it again even where an identical earlier run's results exist.")]
RefArg = Annotated[str, typer.Argument(help="A frame number, a file path, or (with --id) an exposure id.")]
ByIdOption = Annotated[bool, typer.Option("--id", help="REF is an exposure id.")]
MAX_TIMEOUT_S = 2_147_483  # PostgreSQL's statement_timeout holds at most 2**31 - 1 ms (24 days)


def _not_negative(value: float) -> float:
    if value < 0 or not math.isfinite(value):
        raise typer.BadParameter(f"{value:g} is {'below 0' if value < 0 else 'no number of seconds'}; give seconds, or 0 for no limit")
    if value > MAX_TIMEOUT_S:
        raise typer.BadParameter(f"{value:g} s is beyond the longest timeout, {MAX_TIMEOUT_S} s (24 days); 0 for no limit")
    return value


TimeoutOption = Annotated[float, typer.Option(
    "--timeout", callback=_not_negative, help="Seconds before the statement is cancelled on the server (0: no limit).")]
DEFAULT_TIMEOUT_S = 60.0
