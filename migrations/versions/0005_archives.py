"""archives: download queue, searches, observation details

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 01:13:58.813276
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('searches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('archive', sa.String(length=32), nullable=False),
    sa.Column('mission', sa.String(length=32), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('params_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_run_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_searches')),
    sa.UniqueConstraint('archive', 'mission', 'target', name=op.f('uq_searches_archive_mission_target'))
    )
    op.create_table('downloads',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('observation_id', sa.Integer(), nullable=True),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('local_path', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('size_expected', sa.BigInteger(), nullable=True),
    sa.Column('checksum', sa.String(length=128), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['observation_id'], ['observations.id'], name=op.f('fk_downloads_observation_id_observations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_downloads')),
    sa.UniqueConstraint('url', 'local_path', name=op.f('uq_downloads_url_local_path'))
    )
    with op.batch_alter_table('downloads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_downloads_observation_id'), ['observation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_downloads_state'), ['state'], unique=False)

    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('archive', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('instrument', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('exptime', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('row_json', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('first_seen', sa.DateTime(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('observations', schema=None) as batch_op:
        batch_op.drop_column('first_seen')
        batch_op.drop_column('row_json')
        batch_op.drop_column('exptime')
        batch_op.drop_column('instrument')
        batch_op.drop_column('archive')

    with op.batch_alter_table('downloads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_downloads_state'))
        batch_op.drop_index(batch_op.f('ix_downloads_observation_id'))

    op.drop_table('downloads')
    op.drop_table('searches')
