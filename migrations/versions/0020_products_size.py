"""products record the size and time they were written with

A product is up to date only while it is on disk as its run wrote it
(processing.runs.done_before). The files row of a product cannot say so:
a later ingest rewrites it, and so does a later run that writes the same
path. Rows written before this revision have neither (NULL): for them the
files row is compared, as before.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 05:40:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('products') as batch_op:
        batch_op.add_column(sa.Column('size', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('mtime_ns', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('products') as batch_op:
        batch_op.drop_column('mtime_ns')
        batch_op.drop_column('size')
