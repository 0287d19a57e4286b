"""``obsarch calib explain``: which master each frame gets, and why; and the
options the calibration commands share (``--hdu``, the configured rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.app import (
    STATE,
    FormatOption,
    Selection,
    calib_app,
    command,
    load_config,
    open_catalog,
)
from cli.render import Format, console, show_frame

HduOption = Annotated[Optional[str], typer.Option("--hdu", help="Only these detectors, by name: CHAN01,CHAN02 (default: every detector).")]
TypesOption = Annotated[str, typer.Option("--type", help="Calibration types to explain, e.g. bias,flat.")]


def hdu_names(text: str | None) -> tuple[str, ...] | None:
    """``--hdu CHAN01,CHAN02`` -> ("CHAN01", "CHAN02"); None for every detector."""
    if not text:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise typer.BadParameter("give detector names separated by commas, e.g. CHAN01,CHAN02", param_hint="--hdu")
    return names


def configured_rules():
    """The calibration rules of the configuration named by --config."""
    from archive.config import config_path
    from processing.calib_rules import rules_from_config

    return rules_from_config(load_config(), config_path(STATE.config) or "obsarch.toml")


def _kinds(text: str) -> tuple[str, ...]:
    from processing.calib_rules import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise typer.BadParameter(f"{', '.join(unknown) or 'nothing'}: use one or more of {', '.join(KINDS)}", param_hint="--type")
    return kinds


def _choice_json(choice) -> dict:
    frame = choice.frame
    return {
        "exposure_id": frame.exposure_id, "frame_number": frame.frame_number, "frame": frame.path, "type": choice.kind,
        "chosen": choice.chosen.master.path if choice.chosen else None, "reason": choice.reason,
        "candidates": [{"master": v.master.path, "refused": v.refused, "met": v.met} for v in choice.verdicts],
    }


def _show_choice(choice) -> None:
    name = Path(choice.frame.path).name
    number = f" (frame {choice.frame.frame_number})" if choice.frame.frame_number is not None else ""
    if choice.chosen is not None:
        console.print(f"{name}{number} {choice.kind}: {choice.reason}", markup=False)
    else:
        console.print(f"{name}{number} {choice.kind}: no master fits" if choice.verdicts
                      else f"{name}{number} {choice.kind}: {choice.reason}", markup=False)
    for verdict in choice.verdicts:
        if verdict is not choice.chosen:
            state = f"refused by {verdict.refused}" if verdict.refused else "passed, not preferred: " + "; ".join(verdict.met)
            console.print(f"    {Path(verdict.master.path).name}: {state}", markup=False)


@command(calib_app, "explain")
def calib_explain(
    selection: Selection = None,
    types: TypesOption = "bias,dark,flat",
    hdu: HduOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Which master of each type every raw frame of SELECTION gets, with the
    rule values that made it win; or every candidate and the first rule that
    refused it. Products (masters, calibrated frames) are left out, as
    `obsarch calibrate` leaves them. The rules are [calibration.bias|dark|flat]
    of obsarch.toml.

    Example: obsarch calib explain "frame_type == 'science' and night == '2017-08-15'" --type bias,flat
    """
    from processing.calib_rules import explain_rows
    from processing.calibration import explain

    choices = explain(open_catalog().engine, selection, _kinds(types), configured_rules(), hdu_names(hdu))
    if fmt is Format.json:
        typer.echo(json.dumps([_choice_json(c) for c in choices], indent=1, default=str))
    elif fmt is Format.table:
        for choice in choices:
            _show_choice(choice)
    else:
        import pandas as pd

        show_frame(pd.DataFrame(explain_rows(choices)), fmt)
