"""The Typer app, its command groups, the global state, error handling and the
options shared by several commands (declared once, here)."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from archive import __version__

from archive.exceptions import ObsarchError
from cli.render import Format, err_console

app = typer.Typer(
    help="obsarch: a catalog of your observations (FITS headers, quality, groups, products) in SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The catalog's schema: upgrade, current, history.", no_args_is_help=True)
quality_app = typer.Typer(help="Quality metrics of frames and the rules that flag them.", no_args_is_help=True)
flags_app = typer.Typer(help="Quality flags: their history.", no_args_is_help=True)
report_app = typer.Typer(help="Reports over the catalog.", no_args_is_help=True)
group_app = typer.Typer(help="Make groups of exposures: by pointing, by header values, by hand.", no_args_is_help=True)
groups_app = typer.Typer(help="The groups: list them, show one.", no_args_is_help=True)
offsets_app = typer.Typer(help="Offsets of frames onto a reference: compute, show.", no_args_is_help=True)
align_app = typer.Typer(help="Align source lists.", no_args_is_help=True)
calib_app = typer.Typer(help="Calibration masters: bias, dark, flat.", no_args_is_help=True)
archive_app = typer.Typer(help="Search the archives (HEASARC, ESO).", no_args_is_help=True)
roots_app = typer.Typer(help="The directories the catalog's files live in.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(roots_app, name="roots")
app.add_typer(quality_app, name="quality")
app.add_typer(flags_app, name="flags")
app.add_typer(report_app, name="report")
app.add_typer(group_app, name="group")
app.add_typer(groups_app, name="groups")
app.add_typer(offsets_app, name="offsets")
app.add_typer(align_app, name="align")
app.add_typer(calib_app, name="calib")
app.add_typer(archive_app, name="archive")


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
    """A message as one printable line, whatever bytes it carries."""
    return " ".join(str(text).replace("\x00", "\\0").split()).encode("utf-8", "backslashreplace").decode("utf-8")


def reports_errors(function):
    """Turn every error into one line on stderr: obsarch's own exit 1, an
    interrupt 130; anything unexpected also exits 1 with a pointer to
    --debug, which shows the traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter, click.exceptions.ClickException):
            raise  # usage errors and exits keep their own status
        except Exception as exc:
            if type(exc).__module__.startswith(("typer", "click")) and hasattr(exc, "exit_code"):
                raise  # typer's own click (typer._click) raises usage errors of other classes
            _reported(exc)
        except KeyboardInterrupt:
            if STATE.debug:
                raise
            fail("interrupted; nothing half-written was kept", code=130)

    return wrapper


def _reported(exc: Exception) -> None:
    """obsarch's own errors as their one line; anything unexpected too (no
    traceback reaches a user); both exit 1, and --debug raises instead."""
    if STATE.debug:
        raise exc
    if isinstance(exc, ObsarchError):
        fail(str(exc))
    fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    err_console.print(f"error: {_one_line(message)}", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(code) from None


def command(parent: typer.Typer = app, name: str | None = None, **settings):
    """Register a command on ``parent`` with obsarch's error handling."""

    def decorate(function):
        return parent.command(name, **settings)(reports_errors(function))

    return decorate


def open_catalog():
    """The catalog named by --db (refused if it is missing or out of date)."""
    from archive.catalog import Catalog

    return Catalog(STATE.db)


def load_config():
    """The configuration named by --config."""
    from archive.config import load_config as load

    return load(STATE.config)


@contextmanager
def progress(label: str):
    """A progress bar on stderr; yields the ``progress(done, total)`` callback steps take."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# -- options shared by several commands ----------------------------------------------

FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]
Selection = Annotated[Optional[str], typer.Argument(help="Which exposures: a selection or frame numbers (default: all).")]
WorkersOption = Annotated[Optional[int], typer.Option(help="Processes working at once (default: all cores).")]
ExecutorOption = Annotated[str, typer.Option("--executor", help="pool (default), serial or dask.")]
SchedulerOption = Annotated[Optional[str], typer.Option(help="dask scheduler address, e.g. tcp://host:8786 (default: a local cluster).")]
ForceOption = Annotated[bool, typer.Option(help="Do it again even where an identical earlier run's results exist.")]
RefArg = Annotated[str, typer.Argument(help="A frame number, a file path, or (with --id) an exposure id.")]
ByIdOption = Annotated[bool, typer.Option("--id", help="REF is an exposure id.")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", min=0, help="Seconds before the statement is cancelled on the server (0: no limit).")]
DEFAULT_TIMEOUT_S = 60.0
