"""Alembic migrations of the obsarch catalog, shipped inside the package.

``HEAD`` is the newest revision; every command compares the catalog with it
without loading alembic (tests/test_migrations.py checks that it matches).
"""

HEAD = "0023"
