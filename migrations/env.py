"""Alembic environment, shipped inside the package.

obsarch calls alembic in code (``archive.db.upgrade``) and passes its engine
in ``config.attributes``; the ``alembic`` command line works too, with
``sqlalchemy.url`` set.
"""

from alembic import context
from sqlalchemy import create_engine

from archive.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))
    if engine.dialect.name == "postgresql":
        from archive.models import postgresql_options

        postgresql_options()
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite" and config.attributes.get("engine") is not None:
            # obsarch's engine then begins with BEGIN IMMEDIATE: a second `obsarch init` at
            # once waits for the first on the busy timeout instead of failing 'database is locked'
            connection.execution_options(obsarch_write=True)
        if connection.dialect.name == "sqlite":
            # A migration that rebuilds a table (SQLite's way to alter one)
            # must not trip the foreign keys of rows that point at it.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            # the catalog's own schema, the search_path's first: unqualified, alembic found another
            # schema's version table later in the path (team2,public) and left team2 without a catalog
            version_table_schema=(connection.exec_driver_sql("SELECT current_schema()").scalar()
                                  if connection.dialect.name == "postgresql" else None),
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # two `obsarch init`s of one new schema at once: the second waits, then finds it made
                # (the first's CREATE TABLE alembic_version made the other fail on pg_type's unique index)
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('obsarch schema upgrade'))")
            context.run_migrations()
            if connection.dialect.name == "postgresql":
                _grant_reader(connection)
        connection.commit()


def _grant_reader(connection) -> None:
    """Give the catalog's reader role every table this user may grant, after
    every upgrade (PostgreSQL, from 0021 on): default privileges apply only
    to tables their maker makes, so a table a later migration made, run by
    another member of the team, is given to the reader when that member
    upgrades; an upgrade at head by a user who may create roles makes the
    role that a first upgrade could not."""
    from archive.db import READERS_SINCE, grant_reader

    schema = connection.dialect.identifier_preparer.quote(connection.exec_driver_sql("SELECT current_schema()").scalar())
    stored = connection.exec_driver_sql(f"SELECT max(version_num) FROM {schema}.alembic_version").scalar()
    if stored is not None and stored >= READERS_SINCE:
        grant_reader(connection)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
