"""value-and-id indexes: the exposures of one value come out in id order

A header-keyword selection is a semi-join of a keyword's cards with
exposures. Within one (keyword, value) the card indexes list file_ids in
order, and an exposure's id is its file's id; an index on (band, id) lists
the exposures of one band in id order too. PostgreSQL then merges the two
sorted lists instead of hashing one of them, and the result needs no sort. Over
1,000,000 exposures (the catalog of benchmarks/ingest.py, its statements
timed alone, same loaded machine) ``hdr['OBSERVER'] == 'eve' and night ==
'2017-08-03'`` went from 232 to 42 ms, ``hdr['OBSERVER'] == 'eve' and band
== 'V'`` from 509 to 190 ms (79 ms without parallel workers, each of which
reads all the value's cards) and ``... == 'kim' and band == 'V'`` from 70
to 27 ms (an index-only probe per card).
Each replaces the column's own index (SQLite's already ended in the rowid,
which is the id), so an ingest maintains as many indexes as before.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 18:30:00
"""

from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

COLUMNS = ('instrument', 'obsid', 'frame_type', 'band', 'night')


def upgrade() -> None:
    for name in COLUMNS:
        op.drop_index(f'ix_exposures_{name}', table_name='exposures')
        op.create_index(f'ix_exposures_{name}_id', 'exposures', [name, 'id'], unique=False)


def downgrade() -> None:
    for name in COLUMNS:
        op.drop_index(f'ix_exposures_{name}_id', table_name='exposures')
        op.create_index(f'ix_exposures_{name}', 'exposures', [name], unique=False)
