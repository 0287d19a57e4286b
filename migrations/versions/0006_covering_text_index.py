"""covering text index: value_num joins ix_header_cards_text

A query on a text value repeats the partial index's predicate
``value_num IS NULL``; SQLite checks it against the card row unless the
index holds value_num. With it the index answers alone: over 1,000,000
exposures, ``hdr['OBSERVER'] == 'eve' and night == '2017-08-03'`` went from
459 to 182 ms.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 02:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

SHORT_TEXT = 'value_num IS NULL AND length(value_text) <= 256'


def _replace(columns: list[str]) -> None:
    # if_exists: a bulk load killed half-way leaves the card indexes dropped
    op.drop_index('ix_header_cards_text', table_name='header_cards', if_exists=True)
    op.create_index(
        'ix_header_cards_text', 'header_cards', columns, unique=False,
        sqlite_where=sa.text(SHORT_TEXT), postgresql_where=sa.text(SHORT_TEXT),
    )


def upgrade() -> None:
    _replace(['keyword', 'value_text', 'file_id', 'value_num'])


def downgrade() -> None:
    _replace(['keyword', 'value_text', 'file_id'])
