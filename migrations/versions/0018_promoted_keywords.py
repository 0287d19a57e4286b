"""header keywords promoted to indexed columns of exposures (obsarch db promote)

Two unselective conditions over 1,000,000 exposures, one on a header
keyword and one on an indexed column (``hdr['OBSERVER'] == 'eve' and
band == 'V'``), took 60-110 ms from the card rows: two index ranges in
different orders. A promoted keyword is also a column of ``exposures``
with its own indexes; this table lists them. The columns themselves are
added by ``obsarch db promote``, not here. Each ingest fills the columns
of the files it wrote, found by ``files.run_id``, now indexed.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 12:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'promoted_keywords',
        sa.Column('keyword', sa.String(128), nullable=False),
        sa.Column('column_name', sa.String(63), nullable=False),
        sa.Column('kind', sa.String(8), nullable=False),
        sa.Column('filled_run', sa.Integer(), nullable=False),
        sa.Column('broken', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('keyword', name=op.f('pk_promoted_keywords')),
        sa.UniqueConstraint('column_name', name=op.f('uq_promoted_keywords_column_name')),
    )
    op.create_index(op.f('ix_files_run_id'), 'files', ['run_id'])


def downgrade() -> None:
    from sqlalchemy import inspect

    conn = op.get_bind()
    if inspect(conn).has_table('promoted_keywords'):
        for (column,) in conn.execute(sa.text('SELECT column_name FROM promoted_keywords')).all():
            for index in inspect(conn).get_indexes('exposures'):
                if column in index['column_names']:
                    op.drop_index(index['name'], table_name='exposures')
            op.drop_column('exposures', column)
    op.drop_table('promoted_keywords')
    op.drop_index(op.f('ix_files_run_id'), table_name='files')
