"""``obsarch db renormalize``: the detector columns of files ingested before
they existed, computed from the cards the catalog holds."""

from __future__ import annotations

from cli.app import command, db_app, load_config, open_catalog
from cli.render import console


@command(db_app, "renormalize")
def db_renormalize() -> None:
    """Fill the detector columns (binning, gain, CCD temperature, detector,
    detector shape and count) of raw exposures from their stored header cards,
    with the keyword maps of obsarch.toml. Run it once after `obsarch db upgrade`
    to 0009; no file is opened. Products keep the values their step gave them.

    Example: obsarch db renormalize
    """
    from archive.renormalize import renormalize

    count = renormalize(open_catalog().engine, load_config())
    console.print(f"renormalized {count} exposures")
