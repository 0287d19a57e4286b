"""``obsarch serve``: the review web app over the catalog (needs ``obsarch[web]``)."""

from __future__ import annotations

import getpass
import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.exceptions import ObsarchError
from cli.app import STATE, command, open_catalog
from cli.render import console, err_console

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine reaches."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UsageError(ObsarchError):
    """A combination of options that is refused; exits with status 2."""


def check_exposure(host: str, tokens: list[str] | None) -> None:
    """Refuse to serve beyond this machine without a token, in one line."""
    if not is_loopback(host) and not tokens:
        raise UsageError(f"serving on {host} lets anyone who reaches it read the catalog: give --token SECRET "
                         "(or NAME:SECRET), or serve on 127.0.0.1")


@command(name="serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1/localhost needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).", min=0, max=65535)] = 8765,
    allow_write: Annotated[bool, typer.Option("--allow-write", help="Allow grading (a person's flags); read-only without it.")] = False,
    token: Annotated[Optional[list[str]], typer.Option(
        "--token", envvar="OBSARCH_SERVE_TOKEN",
        help="SECRET or NAME:SECRET (repeatable); every request then needs one, and flags are recorded under its NAME.")] = None,
    thumbnails: Annotated[Optional[Path], typer.Option(
        help="Thumbnail cache directory (default: beside a SQLite catalog, DB.thumbnails/; else ~/.cache/obsarch/thumbnails/).")] = None,
    thumbnail_workers: Annotated[int, typer.Option(help="Background threads making thumbnails.", min=1)] = 1,
) -> None:
    """Review the catalog in a browser: search, night view with keyboard grading,
    frame pages, processing runs. Read-only unless --allow-write.

    Example: obsarch serve --allow-write   (then open http://127.0.0.1:8765)
    """
    try:
        check_exposure(host, token)
    except UsageError as exc:
        err_console.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        import uvicorn

        from web.app import create_app
        from web.security import parse_tokens
    except ImportError as exc:
        raise ObsarchError(f"obsarch serve needs the web extra: pip install 'obsarch[web]' ({exc.name} is missing)") from exc
    try:
        tokens = parse_tokens(token, getpass.getuser())
    except ValueError as exc:
        err_console.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    catalog = open_catalog()
    hosts = None if tokens or not is_loopback(host) else ["127.0.0.1", "localhost", "[::1]", "::1"]
    app = create_app(catalog=catalog, allow_write=allow_write, tokens=tokens, thumbnails=thumbnails,
                     thumbnail_workers=thumbnail_workers, allowed_hosts=hosts)
    review = app.state.review
    listening = listen(host, port)  # bound before the banner: a port in use is one line, not a banner and a failure
    port = listening.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    console.print(f"obsarch serve: http://{shown}:{port}/ on {catalog.engine.url.render_as_string(hide_password=True)} "
                  f"({'grading allowed' if allow_write else 'read-only'}; thumbnails in {review.thumbnails.directory})",
                  soft_wrap=True, markup=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="debug" if STATE.debug else "warning"))
    server.run(sockets=[listening])
    if not server.started:  # uvicorn said why; its exit status (3) means "partial" here
        raise ObsarchError(f"the server on {shown}:{port} did not start")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, or one line saying why not (in use, unknown host, not this machine's)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # IPv4 first, as uvicorn binds a host name: a localhost that lists ::1 first must still answer on 127.0.0.1
        family, kind, proto, _, address = min(found, key=lambda entry: entry[0] != socket.AF_INET)
    except (socket.gaierror, UnicodeError) as exc:
        raise ObsarchError(f"cannot serve on {host}: the host name does not resolve ({getattr(exc, 'strerror', None) or exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ObsarchError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return sock
