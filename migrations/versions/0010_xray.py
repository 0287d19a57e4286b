"""X-ray summaries, named metrics, region files

xray_summaries: one row per X-ray file, for one version of it, with the run
of the summary step; named_metrics: numbers by name from tools or people;
region_files: DS9 region files attached to exposures.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 15:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('xray_summaries',
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('file_version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('hdu_index', sa.Integer(), nullable=True),
    sa.Column('counts', sa.Float(), nullable=True),
    sa.Column('exposure_s', sa.Float(), nullable=True),
    sa.Column('rate', sa.Float(), nullable=True),
    sa.Column('net_rate', sa.Float(), nullable=True),
    sa.Column('backscal', sa.Float(), nullable=True),
    sa.Column('channels', sa.Integer(), nullable=True),
    sa.Column('n_events', sa.BigInteger(), nullable=True),
    sa.Column('gti_exposure_s', sa.Float(), nullable=True),
    sa.Column('time_span_s', sa.Float(), nullable=True),
    sa.Column('mean_rate', sa.Float(), nullable=True),
    sa.Column('frac_rms', sa.Float(), nullable=True),
    sa.Column('mjd_start', sa.Float(), nullable=True),
    sa.Column('mjd_stop', sa.Float(), nullable=True),
    sa.Column('mjd_mid', sa.Float(), nullable=True),
    sa.Column('backfile', sa.Text(), nullable=True),
    sa.Column('respfile', sa.Text(), nullable=True),
    sa.Column('ancrfile', sa.Text(), nullable=True),
    sa.Column('background_id', sa.Integer(), nullable=True),
    sa.Column('response_id', sa.Integer(), nullable=True),
    sa.Column('arf_id', sa.Integer(), nullable=True),
    sa.Column('warnings', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('computed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['arf_id'], ['files.id'], name=op.f('fk_xray_summaries_arf_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['background_id'], ['files.id'], name=op.f('fk_xray_summaries_background_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_xray_summaries_file_id_files'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_id'], ['files.id'], name=op.f('fk_xray_summaries_response_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_xray_summaries_run_id_runs')),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_xray_summaries'))
    )
    op.create_index(op.f('ix_xray_summaries_kind'), 'xray_summaries', ['kind'], unique=False)
    op.create_index(op.f('ix_xray_summaries_mjd_mid'), 'xray_summaries', ['mjd_mid'], unique=False)

    op.create_table('named_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('who', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_named_metrics_exposure_id_exposures')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_named_metrics_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_named_metrics'))
    )
    op.create_index(op.f('ix_named_metrics_exposure_id'), 'named_metrics', ['exposure_id'], unique=False)
    op.create_index('ix_named_metrics_name_exposure_id_id', 'named_metrics', ['name', 'exposure_id', 'id'], unique=False)

    op.create_table('region_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('frame', sa.String(length=32), nullable=True),
    sa.Column('n_shapes', sa.Integer(), nullable=False),
    sa.Column('shapes', sa.Text(), nullable=True),
    sa.Column('how', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_region_files_exposure_id_exposures')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_region_files')),
    sa.UniqueConstraint('exposure_id', 'path', name=op.f('uq_region_files_exposure_id_path'))
    )
    op.create_index(op.f('ix_region_files_exposure_id'), 'region_files', ['exposure_id'], unique=False)


def downgrade() -> None:
    op.drop_table('region_files')
    op.drop_table('named_metrics')
    op.drop_table('xray_summaries')
