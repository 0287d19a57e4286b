"""Processing runs: every step records what it did, with which parameters and code."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, insert, update

from archive import __version__
from archive.db import transaction
from archive.ingest import utcnow
from archive.models import Run


def params_hash(step: str, params: dict, algorithm: str) -> str:
    """A stable hash of a step's parameters and algorithm version: a result
    made with the same hash need not be made again."""
    text = json.dumps({"step": step, "params": params, "algorithm": algorithm}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class RunRecord:
    id: int
    step: str
    params: dict
    params_hash: str
    summary: dict = field(default_factory=dict)


@contextmanager
def recorded_run(engine: Engine, step: str, params: dict, algorithm: str) -> Iterator[RunRecord]:
    """Record a run of ``step``: 'running' now, then 'done' with its summary,
    or 'failed' / 'interrupted' with the error (which is raised again)."""
    digest = params_hash(step, params, algorithm)
    with transaction(engine, write=True) as conn:
        run_id = conn.execute(
            insert(Run)
            .values(
                step=step, params_json=json.dumps(params, sort_keys=True, default=str), params_hash=digest,
                code_version=f"{__version__} {algorithm}", host=socket.gethostname(), user=getpass.getuser(),
                pid=os.getpid(), started_at=utcnow(), state="running",
            )
            .returning(Run.id)
        ).scalar_one()
    record = RunRecord(run_id, step, params, digest)
    try:
        yield record
    except BaseException as exc:
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _finish(engine, record, state, f"{type(exc).__name__}: {exc}")
        raise
    _finish(engine, record, "done", None)


def _finish(engine: Engine, record: RunRecord, state: str, error: str | None) -> None:
    with transaction(engine, write=True) as conn:
        conn.execute(
            update(Run)
            .where(Run.id == record.id)
            .values(finished_at=utcnow(), state=state, error=error, summary_json=json.dumps(record.summary, default=str))
        )
