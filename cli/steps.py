"""How every processing command reports a step and exits: what it did,
skipped and failed, a last line that sums it up, and the exit code of the
step's result (0 done, 3 partial, 1 nothing done)."""

from __future__ import annotations

import typer

from cli.render import console, err_console

SHOWN = 20  # failures listed one per line before the summary line


def finish_step(result, *, done_label: str = "done") -> None:
    """Print ``result`` (a :class:`processing.machinery.StepResult`), its notes
    on stderr first, and exit with its code."""
    for note in result.notes:
        err_console.print(f"{result.step}: {note}", markup=False, soft_wrap=True)
    for path in result.products:
        console.print(f"{result.step}: wrote {path}", markup=False, soft_wrap=True)
    for key, reason in (result.failed + result.short)[:SHOWN]:
        err_console.print(f"  {key}: {reason}", markup=False, soft_wrap=True)
    stream = console if result.exit_code == 0 else err_console
    stream.print(result.last_line(), markup=False, soft_wrap=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def merge_results(step: str, results: list):
    """One result of several runs of a step (the groups of a two-stage registration)."""
    from processing.machinery import StepResult

    merged = StepResult(step)
    for result in results:
        merged.done += result.done
        merged.skipped += result.skipped
        merged.failed += result.failed
        merged.short += result.short
        merged.products += result.products
        merged.notes += result.notes
    return merged
