"""The schema: created only by migrations, which agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from archive import db
from archive.models import Base


def schema_diff(engine) -> list:
    """What alembic would change to make the database match the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_models_and_migrations_agree(url):
    engine = db.make_engine(url)
    db.upgrade(engine)
    diff = schema_diff(engine)
    engine.dispose()
    assert diff == []


def test_downgrade_and_upgrade_again(url):
    from alembic import command

    engine = db.make_engine(url)
    db.upgrade(engine)
    command.downgrade(db.alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision(engine)
    engine.dispose()


def test_sqlite_pragmas(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_S * 1000
    engine.dispose()


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("OBSARCH_DB", raising=False)
    assert db.resolve_url() == "sqlite:///obsarch.db"
    monkeypatch.setenv("OBSARCH_DB", "postgresql://u@h/d")
    assert db.resolve_url() == "postgresql+psycopg://u@h/d"
    assert db.resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db.resolve_url("/data/cat.db") == "sqlite:////data/cat.db"


def test_head_constant_is_alembics_head(tmp_path):
    from alembic.script import ScriptDirectory

    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    assert ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head() == db.head_revision()
