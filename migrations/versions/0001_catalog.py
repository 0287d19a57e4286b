"""catalog: files, headers, exposures, observations, ingest runs

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 00:43:50.814302
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ingest_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('paths', sa.Text(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('n_new', sa.Integer(), nullable=False),
    sa.Column('n_changed', sa.Integer(), nullable=False),
    sa.Column('n_unchanged', sa.Integer(), nullable=False),
    sa.Column('n_missing', sa.Integer(), nullable=False),
    sa.Column('n_failed', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_runs'))
    )
    op.create_table('observations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mission', sa.String(length=32), nullable=False),
    sa.Column('obsid', sa.String(length=64), nullable=False),
    sa.Column('target', sa.Text(), nullable=True),
    sa.Column('ra', sa.Float(), nullable=True),
    sa.Column('dec', sa.Float(), nullable=True),
    sa.Column('t_start', sa.DateTime(), nullable=True),
    sa.Column('t_end', sa.DateTime(), nullable=True),
    sa.Column('public_date', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_observations')),
    sa.UniqueConstraint('mission', 'obsid', name=op.f('uq_observations_mission_obsid'))
    )
    op.create_table('roots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roots')),
    sa.UniqueConstraint('path', name=op.f('uq_roots_path'))
    )
    op.create_table('files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('root_id', sa.Integer(), nullable=False),
    sa.Column('relpath', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('header_hash', sa.String(length=64), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['root_id'], ['roots.id'], name=op.f('fk_files_root_id_roots')),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_files_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files')),
    sa.UniqueConstraint('root_id', 'relpath', name=op.f('uq_files_root_id_relpath'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_status'), ['status'], unique=False)

    op.create_table('exposures',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('observation_id', sa.Integer(), nullable=True),
    sa.Column('instrument', sa.String(length=80), nullable=True),
    sa.Column('telescope', sa.String(length=80), nullable=True),
    sa.Column('obsid', sa.String(length=80), nullable=True),
    sa.Column('object', sa.String(length=80), nullable=True),
    sa.Column('frame_type', sa.String(length=16), nullable=True),
    sa.Column('band', sa.String(length=32), nullable=True),
    sa.Column('exptime', sa.Float(), nullable=True),
    sa.Column('date_obs', sa.DateTime(), nullable=True),
    sa.Column('mjd', sa.Float(), nullable=True),
    sa.Column('night', sa.String(length=10), nullable=True),
    sa.Column('ra', sa.Float(), nullable=True),
    sa.Column('dec', sa.Float(), nullable=True),
    sa.Column('airmass', sa.Float(), nullable=True),
    sa.Column('readout_mode', sa.String(length=80), nullable=True),
    sa.Column('frame_number', sa.BigInteger(), nullable=True),
    sa.Column('sources', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_exposures_file_id_files')),
    sa.ForeignKeyConstraint(['observation_id'], ['observations.id'], name=op.f('fk_exposures_observation_id_observations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exposures')),
    sa.UniqueConstraint('file_id', name=op.f('uq_exposures_file_id'))
    )
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exposures_band'), ['band'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_frame_number'), ['frame_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_frame_type'), ['frame_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_instrument'), ['instrument'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_mjd'), ['mjd'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_night'), ['night'], unique=False)
        batch_op.create_index(batch_op.f('ix_exposures_obsid'), ['obsid'], unique=False)

    op.create_table('file_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('header_hash', sa.String(length=64), nullable=True),
    sa.Column('headers_json', sa.Text(), nullable=False),
    sa.Column('replaced_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_file_versions_file_id_files')),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_file_versions_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_file_versions')),
    sa.UniqueConstraint('file_id', 'version', name=op.f('uq_file_versions_file_id_version'))
    )
    op.create_table('hdus',
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('hdu_index', sa.Integer(), nullable=False),
    sa.Column('extname', sa.Text(), nullable=True),
    sa.Column('hdu_type', sa.String(length=16), nullable=False),
    sa.Column('shape', sa.String(length=64), nullable=True),
    sa.Column('bitpix', sa.Integer(), nullable=True),
    sa.Column('ncards', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_hdus_file_id_files'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', 'hdu_index', name=op.f('pk_hdus'))
    )
    op.create_table('ingest_errors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_ingest_errors_file_id_files')),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_ingest_errors_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_errors'))
    )
    with op.batch_alter_table('ingest_errors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_errors_run_id'), ['run_id'], unique=False)

    op.create_table('header_cards',
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('hdu_index', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('keyword', sa.String(length=80), nullable=False),
    sa.Column('value_text', sa.Text(), nullable=True),
    sa.Column('value_num', sa.Float(), nullable=True),
    sa.Column('vtype', sa.String(length=1), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['file_id', 'hdu_index'], ['hdus.file_id', 'hdus.hdu_index'], name=op.f('fk_header_cards_file_id_hdu_index_hdus'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', 'hdu_index', 'position', name=op.f('pk_header_cards')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('header_cards', schema=None) as batch_op:
        batch_op.create_index('ix_header_cards_long', ['keyword', 'file_id'], unique=False, sqlite_where=sa.text('value_num IS NULL AND length(value_text) > 256'), postgresql_where=sa.text('value_num IS NULL AND length(value_text) > 256'))
        batch_op.create_index('ix_header_cards_num', ['keyword', 'value_num', 'file_id'], unique=False, sqlite_where=sa.text('value_num IS NOT NULL'), postgresql_where=sa.text('value_num IS NOT NULL'))
        batch_op.create_index('ix_header_cards_text', ['keyword', 'value_text', 'file_id'], unique=False, sqlite_where=sa.text('value_num IS NULL AND length(value_text) <= 256'), postgresql_where=sa.text('value_num IS NULL AND length(value_text) <= 256'))



def downgrade() -> None:
    with op.batch_alter_table('header_cards', schema=None) as batch_op:
        batch_op.drop_index('ix_header_cards_text', sqlite_where=sa.text('value_num IS NULL AND length(value_text) <= 256'), postgresql_where=sa.text('value_num IS NULL AND length(value_text) <= 256'))
        batch_op.drop_index('ix_header_cards_num', sqlite_where=sa.text('value_num IS NOT NULL'), postgresql_where=sa.text('value_num IS NOT NULL'))
        batch_op.drop_index('ix_header_cards_long', sqlite_where=sa.text('value_num IS NULL AND length(value_text) > 256'), postgresql_where=sa.text('value_num IS NULL AND length(value_text) > 256'))

    op.drop_table('header_cards')
    with op.batch_alter_table('ingest_errors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_errors_run_id'))

    op.drop_table('ingest_errors')
    op.drop_table('hdus')
    op.drop_table('file_versions')
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exposures_obsid'))
        batch_op.drop_index(batch_op.f('ix_exposures_night'))
        batch_op.drop_index(batch_op.f('ix_exposures_mjd'))
        batch_op.drop_index(batch_op.f('ix_exposures_instrument'))
        batch_op.drop_index(batch_op.f('ix_exposures_frame_type'))
        batch_op.drop_index(batch_op.f('ix_exposures_frame_number'))
        batch_op.drop_index(batch_op.f('ix_exposures_band'))

    op.drop_table('exposures')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_status'))

    op.drop_table('files')
    op.drop_table('roots')
    op.drop_table('observations')
    op.drop_table('ingest_runs')
