"""Detectors in the catalog: ``obsarch db renormalize`` (the detector columns
of files ingested before they existed, from the cards the catalog holds) and
``obsarch quality detectors`` (each detector's quality numbers)."""

from __future__ import annotations

from archive.formats import counted
from cli.app import (
    FormatOption,
    Selection,
    command,
    db_app,
    load_config,
    open_catalog,
    quality_app,
)
from cli.render import Format, console, err_console, show_frame


@command(db_app, "renormalize")
def db_renormalize() -> None:
    """Compute again, from the stored header cards, the columns whose rules
    came or changed after files were ingested: the detector columns (binning,
    gain, CCD temperature, detector, detector shape and count; migration
    0009), the exposure time in the unit its card's comment gives, frame
    numbers from file names, no band for X-ray files, and an X-ray file's
    frame type from its kind (events science, spectra and other products
    other). Uses the keyword
    maps of obsarch.toml; no file is opened. Products keep the values their
    step gave them and get their empty ones from their own cards.

    Example: obsarch db renormalize
    """
    from archive.renormalize import renormalize

    warned: list[str] = []
    count = renormalize(open_catalog().engine, load_config(), warned=warned)
    for line in warned:  # a value left empty and why, naming the file (as ingest says it)
        err_console.print(f"warning: {line}", markup=False, soft_wrap=True)
    console.print(f"renormalized {counted(count, 'exposure')}")


@command(quality_app, "detectors")
def quality_detectors(selection: Selection = None, fmt: FormatOption = Format.table) -> None:
    """Each detector's quality numbers (the exposure's own are their median).

    Example: obsarch quality detectors "instrument == 'MUSE' and night == '2014-07-27'"
    """
    import pandas as pd

    from archive.detectors import DETECTOR_METRIC_NAMES, detector_metrics

    rows = detector_metrics(open_catalog().engine, selection)
    columns = ["exposure_id", "frame_number", "detector", "hdu_index", *DETECTOR_METRIC_NAMES]
    show_frame(pd.DataFrame(rows, columns=columns), fmt)
