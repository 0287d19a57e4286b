"""a reader role per catalog: the shared obsarch_reader read every catalog

``obsarch sql`` ran as ``obsarch_reader`` (0012), one role for the whole
server that every catalog granted SELECT: a user granted it to use one
team's catalog could read every team's (found by a team trial). On
PostgreSQL each catalog (database and schema) now gets a role of its own,
named by ``archive.db.reader_role``, which may read only this schema's
tables; this catalog's grants to ``obsarch_reader`` are revoked. The shared
role is kept: other catalogs, and older obsarch, may still use it.

Downgrade gives the catalog back to ``obsarch_reader`` and drops its own
role (unless another user's default privileges still name it).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-04 10:00:00
"""

from alembic import op

from archive.db import SHARED_READER_ROLE, grant_reader, reader_role


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    grant_reader(op.get_bind())
    _take_from(SHARED_READER_ROLE)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    role = reader_role(*bind.exec_driver_sql("SELECT current_database(), current_schema()").one())
    _take_from(role)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                DROP ROLE {role};
            END IF;
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            RAISE NOTICE 'the role {role} is kept: %', SQLERRM;
        END $$""")
    _give_back_to_shared()


def _take_from(role: str) -> None:
    # What 0012 (or 0021) gave the role in this schema: each user's default privileges
    # (one's own, or a role's this user is a member of), the grants on every table and
    # view, USAGE of the schema. A grant this user cannot take back is said in a notice.
    op.execute(f"""
        DO $$
        DECLARE
            maker name;
            relation regclass;
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                RETURN;
            END IF;
            FOR maker IN
                SELECT pg_get_userbyid(d.defaclrole) FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
                WHERE n.nspname = current_schema() AND d.defaclobjtype = 'r'
            LOOP
                BEGIN
                    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I REVOKE SELECT ON TABLES FROM {role}',
                                   maker, current_schema());
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE 'the default privileges of % still give {role} their new tables', maker;
                END;
            END LOOP;
            FOR relation IN
                SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            LOOP
                BEGIN
                    EXECUTE format('REVOKE SELECT ON %s FROM {role}', relation);
                EXCEPTION WHEN insufficient_privilege THEN NULL;
                END;
            END LOOP;
            BEGIN
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {role}', current_schema());
            EXCEPTION WHEN insufficient_privilege THEN NULL;
            END;
            IF has_schema_privilege('{role}', current_schema(), 'USAGE') AND EXISTS (
                SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND has_table_privilege('{role}', c.oid, 'SELECT')) THEN
                RAISE NOTICE '{role} may still read tables of schema %: their owner revokes it', current_schema();
            END IF;
        END $$""")


def _give_back_to_shared() -> None:
    # as 0012 left the catalog, if the shared role is there
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{SHARED_READER_ROLE}') THEN
                EXECUTE format('GRANT USAGE ON SCHEMA %I TO {SHARED_READER_ROLE}', current_schema());
                EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {SHARED_READER_ROLE}', current_schema());
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {SHARED_READER_ROLE}',
                               current_schema());
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot give schema % back to {SHARED_READER_ROLE}: %', current_schema(), SQLERRM;
        END $$""")
