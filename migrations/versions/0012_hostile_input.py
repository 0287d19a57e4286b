"""hostile input: no column width rejects a legal FITS value; a read-only role

Header values are free text of any length (CONTINUE joins them) and BITPIX
an integer of any size, so the normalized text columns lose their widths
(PostgreSQL refused a 59-character FILTER that SQLite stored) and ``bitpix``
becomes a BIGINT. On PostgreSQL the role ``obsarch_reader`` is created if
missing and may only read this schema's tables: ``obsarch sql`` runs its
statement after ``SET ROLE obsarch_reader`` inside a read-only transaction.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 15:20:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

READER = 'obsarch_reader'
WIDENED = {
    'exposures': {'instrument': 80, 'telescope': 80, 'obsid': 80, 'object': 80, 'band': 32, 'readout_mode': 80,
                  'detector': 80, 'detector_shape': 64},
    'hdus': {'shape': 64},
    'detector_metrics': {'detector': 80},
}


def _views() -> list[tuple[str, str]]:
    """(name, CREATE statement) of every view, in the order they were made."""
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        return [tuple(r) for r in bind.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")]
    rows = bind.exec_driver_sql(
        "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'v' AND n.nspname = current_schema() ORDER BY c.oid")
    return [(name, f'CREATE VIEW "{name}" AS {definition}') for name, definition in rows]


def _retype(change) -> None:
    # A column a view reads cannot change type under it (PostgreSQL), and
    # SQLite's table rebuild breaks the view: views are made again after.
    views = _views()
    for name, _ in reversed(views):
        op.execute(f'DROP VIEW IF EXISTS "{name}"')
    change()
    for _, create in views:
        op.execute(create)


def upgrade() -> None:
    _retype(_widen)
    if op.get_bind().dialect.name == 'postgresql':
        _reader_role()


def _widen() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, width in columns.items():
                batch.alter_column(column, type_=sa.Text(), existing_type=sa.String(width))
    with op.batch_alter_table('hdus') as batch:
        batch.alter_column('bitpix', type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)


def _reader_role() -> None:
    # Roles belong to the whole server: another catalog may have made it, or
    # be making it right now. A user who may not create roles gets a catalog
    # without it; `obsarch sql` then says so in one line.
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                CREATE ROLE {READER} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
            END IF;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN RAISE NOTICE 'cannot create the role {READER}: obsarch sql will refuse to run';
        END $$""")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER}', current_schema());
                EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {READER}', current_schema());
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {READER}', current_schema());
                BEGIN
                    EXECUTE format('GRANT {READER} TO %I', current_user);
                EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN NULL;
                END;
            END IF;
        END $$""")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {READER}', current_schema());
                    EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {READER}', current_schema());
                    EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER}', current_schema());
                END IF;
            END $$""")
    _retype(_narrow)


def _narrow() -> None:
    with op.batch_alter_table('hdus') as batch:
        batch.alter_column('bitpix', type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
    for table, columns in reversed(list(WIDENED.items())):
        with op.batch_alter_table(table) as batch:
            for column, width in columns.items():
                batch.alter_column(column, type_=sa.String(width), existing_type=sa.Text())
