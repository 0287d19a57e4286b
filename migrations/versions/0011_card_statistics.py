"""card statistics: PostgreSQL learns which keyword goes with which value

A header-keyword selection is a semi-join of the card table with exposures;
whether PostgreSQL hashes it or probes exposure by exposure depends on how
many cards it expects. Per-column statistics multiply the frequency of the
keyword by that of the value, as if they were independent: for
``hdr['OBSERVER'] == 'eve'`` (a third of 1,000,000 exposures) it expected
713 cards and probed 333,000 times, 3.9 s. A multivariate MCV list on
(keyword, value_text) knows the pair; the same query then hashes: 0.47 s
(benchmarks/ingest.py, same run, loaded machine). SQLite plans these
queries the same way with or without statistics: nothing to do there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:25:00
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

STATISTICS = 'st_header_cards_keyword_text'


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f'CREATE STATISTICS IF NOT EXISTS {STATISTICS} (mcv) ON keyword, value_text FROM header_cards')
    # headers hold hundreds of keywords and values: a longer list than the default 100 pairs
    op.execute(f'ALTER STATISTICS {STATISTICS} SET STATISTICS 1000')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f'DROP STATISTICS IF EXISTS {STATISTICS}')
