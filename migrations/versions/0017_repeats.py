"""quality metric ``repeats``: pairs of bright stars that show one star twice

A telescope bumped during an exposure leaves each star at two places; each
copy is round, so elongation passed such frames (the real UB17-033). The
metric is NULL for frames measured before; the quality algorithm's version
changed with it, so the next ``obsarch quality compute`` measures them again.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 09:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE: a batch copy of the table would break the views that read it
    for table in ('metrics', 'detector_metrics'):
        op.add_column(table, sa.Column('repeats', sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ('detector_metrics', 'metrics'):
        op.drop_column(table, 'repeats')
