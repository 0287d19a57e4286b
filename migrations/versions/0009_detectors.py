"""detectors: binning, gain, CCD temperature and detector columns of an
exposure, and quality metrics per detector

The calibration rules match frames and masters on binning, gain, CCD
temperature and detector shape; the pixel steps work per detector and store
each detector's metrics beside the exposure's summary. Exposures ingested
before are filled by `obsarch db renormalize`, from their stored cards.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 15:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

COLUMNS = (
    ('xbin', sa.Integer()), ('ybin', sa.Integer()), ('gain', sa.Float()), ('ccd_temp', sa.Float()),
    ('detector', sa.String(length=80)), ('detector_shape', sa.String(length=64)), ('n_detectors', sa.Integer()),
)
METRICS = (
    'min', 'max', 'mean', 'median', 'std', 'background', 'background_rms', 'saturation_level',
    'saturated_fraction', 'nstars', 'fwhm', 'fwhm_minor', 'fwhm_arcsec', 'elongation', 'sharpness', 'pixel_scale',
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column('exposures', sa.Column(name, type_, nullable=True))
    op.create_table(
        'detector_metrics',
        sa.Column('exposure_id', sa.Integer(), nullable=False),
        sa.Column('detector', sa.String(length=80), nullable=False),
        sa.Column('hdu_index', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        *[sa.Column(name, sa.Integer() if name == 'nstars' else sa.Float(), nullable=True) for name in METRICS],
        sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_detector_metrics_exposure_id_exposures')),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_detector_metrics_run_id_runs')),
        sa.PrimaryKeyConstraint('exposure_id', 'detector', name=op.f('pk_detector_metrics')),
    )
    op.create_index(op.f('ix_detector_metrics_run_id'), 'detector_metrics', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_detector_metrics_run_id'), table_name='detector_metrics')
    op.drop_table('detector_metrics')
    # plain ALTER TABLE (SQLite >= 3.35): a batch copy of the table would
    # break the views that read it
    for name, _ in reversed(COLUMNS):
        op.drop_column('exposures', name)
