"""PostgreSQL: a card's keyword and text, and promoted text columns, collated "C"

A selection orders text by its bytes on both backends (``query.byte_order``
collates it "C" on PostgreSQL, as SQLite orders all text). The card
indexes were built in the database's collation, which a "C" range cannot
use: ``hdr['OBSERVER'] >= 'kim'`` read every OBSERVER card of the catalog
and filtered them (100,000 exposures: 28 ms, 7.6 ms after). The columns
are now collated "C" themselves, so ranges, sorts and equality all use
the indexes; equality is the same in every deterministic collation, and
``like`` folds a card's case as before (cards are ASCII). A first
ingest's index builds compare bytes instead of calling the locale; that
made no difference measurable on this machine (3,000 files, alternated).

PostgreSQL rebuilds the card indexes that hold the columns (no table
rewrite): about 24 s per 15 million cards on a 2-core machine, once. It
also forgets the columns' statistics and the list length of 0011's
statistics of keyword and value pairs: both are given back here. Views
of the schema (a user's, reading these columns, would stop the change)
are set aside and made again as they were, grants included.
SQLite orders text by its bytes already: nothing changes there.

Downgrade gives the columns the database's collation again.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05 03:00:00
"""

from alembic import op
from sqlalchemy import text

from archive.db import views_set_aside


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

STATISTICS = 'st_header_cards_keyword_text'  # 0011's


def _collate(collation: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    # promoted text columns (archive.promoted), those present: a promote killed midway may have left none
    promoted = bind.execute(text(
        "SELECT p.column_name FROM promoted_keywords p JOIN information_schema.columns c "
        "ON c.table_schema = current_schema() AND c.table_name = 'exposures' AND c.column_name = p.column_name "
        "WHERE p.kind = 'text' ORDER BY p.column_name")).scalars().all()
    with views_set_aside(bind):  # a view reading a column (a user's) would stop the change
        op.execute(f'ALTER TABLE header_cards ALTER COLUMN keyword TYPE VARCHAR(80) COLLATE "{collation}", '
                   f'ALTER COLUMN value_text TYPE TEXT COLLATE "{collation}"')
        for column in promoted:
            op.execute(f'ALTER TABLE exposures ALTER COLUMN {column} TYPE TEXT COLLATE "{collation}"')
    op.execute(f'ALTER STATISTICS {STATISTICS} SET STATISTICS 1000')  # as 0011 made it: the change made it anew
    op.execute('ANALYZE header_cards' + (', exposures' if promoted else ''))


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")
