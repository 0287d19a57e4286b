"""matched stars: the star pairs a star-matched offset was fitted on

The frame page draws them over the preview, so that a person can see
whether a registration matched real stars. Older offsets have none (NULL).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 17:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offsets') as batch:
        batch.add_column(sa.Column('matched_json', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('offsets') as batch:
        batch.drop_column('matched_json')
