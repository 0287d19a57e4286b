"""The ``obsarch`` command line: parse, call the library, render.

The app and its shared options live in :mod:`cli.app`; each command group
registers its commands on it from its own module. A run imports only the
modules of the command it runs (:data:`MODULES`); help, a mistyped command
and ``cli.main.app`` get them all.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["run", "MODULES"]  # and `app`, built on first use (see __getattr__)

# The modules of cli that register each top-level command or group (hidden
# old spellings included). tests/test_cli_ux.py checks it against what the
# modules register.
MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("ingest", "query", "show", "summary", "errors", "sql"), ("catalog",)),
    **dict.fromkeys(("init", "demo", "roots"), ("admin",)),
    "db": ("admin", "detectors"),
    "quality": ("detectors", "quality"),
    **dict.fromkeys(("flag", "flags"), ("quality",)),
    "report": ("quality", "xray"),
    **dict.fromkeys(("group", "groups", "offsets", "align"), ("groups",)),
    "calib": ("calib_rules", "processing"),
    **dict.fromkeys(("calibrate", "stack", "run", "runs", "products", "lineage", "stale"), ("processing",)),
    **dict.fromkeys(("archive", "fetch", "downloads", "sync"), ("archives",)),
    **dict.fromkeys(("xray", "metrics", "regions"), ("xray",)),
    "serve": ("web",),
}
ALL = ("admin", "archives", "calib_rules", "catalog", "detectors", "groups", "processing", "quality", "web", "xray")
_VALUED = ("--db", "--config")  # the app's options that take a value


def __getattr__(name: str):
    if name == "app":
        return _app()
    raise AttributeError(name)


def _app(modules=ALL):
    # Each module registers its commands on the app; panels order the help.
    import importlib

    from cli.app import app

    for module in modules:
        importlib.import_module(f"cli.{module}")
    return app


def _command_name(args: list[str]) -> str | None:
    """The top-level command or group ``args`` name, if any."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _only(app, name: str):
    """A copy of ``app`` with only the command or group ``name``: Typer
    builds every command it holds (their signatures, their types) before
    running one."""
    import copy

    only = copy.copy(app)
    only.registered_commands = [c for c in app.registered_commands
                                if (c.name or c.callback.__name__.replace("_", "-")) == name]
    only.registered_groups = [g for g in app.registered_groups if g.name == name]
    return only


def run() -> None:
    """The ``obsarch`` console script.

    ``obsarch --version`` answers before Typer is imported: it needs nothing
    else, and Typer alone is five bare Pythons of start-up.

    Everything imported so far lives until the process exits, so it is
    frozen out of the cycle collector: collections during a long ingest no
    longer walk it, forked workers do not copy it, and the interpreter's
    final collection skips it (exit went from ~0.25 s to ~0.06 s).
    """
    if sys.argv[1:] == ["--version"]:
        from archive import __version__

        try:
            print(f"obsarch {__version__}", flush=True)
        except BrokenPipeError:  # `obsarch --version | true`: no error (see cli.app._plain_endings)
            from cli.render import silence_stdout

            silence_stdout()
        return
    # A known command imports the modules that register it, and Typer builds
    # it alone; help, no command or a mistyped one get every command.
    name = _command_name(sys.argv[1:])
    app = _only(_app(MODULES[name]), name) if name in MODULES else _app()
    gc.freeze()
    try:
        app()
    except Exception as exc:  # noqa: BLE001  (raised outside any command: still one line, --debug for the traceback)
        if "--debug" in sys.argv:  # the traceback, and the status the one line would have had
            import traceback

            from archive.exceptions import UsageError

            traceback.print_exc()
            sys.exit(2 if isinstance(exc, UsageError) else 1)
        from cli.app import _one_line

        print(f"error: {_one_line(f'unexpected {type(exc).__name__}: {exc}')} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
