"""region files say which shapes are source, background and excluded, and where they lie

A CXC region file's SRCREG and BKGREG tables were counted as one list, and
DS9 exclusion shapes (``-circle``) as plain ones; a sky region file was
attached to exposures pointed anywhere. ``n_excluded`` and ``n_background``
count those shapes apart (NULL for files attached before: attach them again
to count), ``separation_deg`` is the nearest shape centre's distance from
the exposure's pointing, and ``position`` what the check found (or why it
could not be made).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 06:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

_COLUMNS = (('n_excluded', sa.Integer()), ('n_background', sa.Integer()), ('separation_deg', sa.Float()),
            ('position', sa.Text()))


def upgrade() -> None:
    with op.batch_alter_table('region_files') as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('region_files') as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
