"""quality: runs, metrics, flags and quality views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 00:51:54.382090
"""

from alembic import op
import sqlalchemy as sa

# The current flag of an exposure: the latest from a person, else the latest
# from a rule. Plain SQL that both SQLite and PostgreSQL run.
CURRENT_FLAGS = """
CREATE VIEW current_flags AS
SELECT f.exposure_id, f.grade, f.reason, f.note, f.source, f.rule, f.value, f.threshold,
       f.who, f.created_at, f.run_id, f.id AS flag_id
FROM flags f
WHERE f.id = (
    SELECT f2.id FROM flags f2
    WHERE f2.exposure_id = f.exposure_id
    ORDER BY CASE WHEN f2.source = 'person' THEN 0 ELSE 1 END, f2.id DESC
    LIMIT 1
)
"""

EXPOSURE_QUALITY = """
CREATE VIEW exposure_quality AS
SELECT e.id AS exposure_id, e.frame_number, e.night, e.band, e.frame_type, e.object, e.date_obs, e.mjd,
       e.exptime, e.airmass, m.background, m.background_rms, m.nstars, m.fwhm, m.fwhm_minor, m.fwhm_arcsec,
       m.elongation, m.sharpness, m.saturated_fraction, m.error AS metrics_error,
       c.grade, c.reason, c.source AS flag_source, c.note
FROM exposures e
LEFT JOIN metrics m ON m.exposure_id = e.id
LEFT JOIN current_flags c ON c.exposure_id = e.id
"""

QUALITY_SUMMARY = """
CREATE VIEW quality_summary AS
SELECT e.night, e.band, COALESCE(c.grade, 'unreviewed') AS grade, COUNT(*) AS exposures
FROM exposures e
LEFT JOIN current_flags c ON c.exposure_id = e.id
WHERE e.frame_type = 'science'
GROUP BY e.night, e.band, COALESCE(c.grade, 'unreviewed')
"""

VIEWS = ("quality_summary", "exposure_quality", "current_flags")


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=64), nullable=False),
    sa.Column('params_json', sa.Text(), nullable=False),
    sa.Column('params_hash', sa.String(length=64), nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('summary_json', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_step'), ['step'], unique=False)

    op.create_table('flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('grade', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('who', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_flags_exposure_id_exposures')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_flags_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flags'))
    )
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.create_index('ix_flags_exposure_id_id', ['exposure_id', 'id'], unique=False)

    op.create_table('metrics',
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('params_hash', sa.String(length=64), nullable=False),
    sa.Column('file_version', sa.Integer(), nullable=False),
    sa.Column('hdu_index', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('min', sa.Float(), nullable=True),
    sa.Column('max', sa.Float(), nullable=True),
    sa.Column('mean', sa.Float(), nullable=True),
    sa.Column('median', sa.Float(), nullable=True),
    sa.Column('std', sa.Float(), nullable=True),
    sa.Column('background', sa.Float(), nullable=True),
    sa.Column('background_rms', sa.Float(), nullable=True),
    sa.Column('saturation_level', sa.Float(), nullable=True),
    sa.Column('saturated_fraction', sa.Float(), nullable=True),
    sa.Column('nstars', sa.Integer(), nullable=True),
    sa.Column('fwhm', sa.Float(), nullable=True),
    sa.Column('fwhm_minor', sa.Float(), nullable=True),
    sa.Column('fwhm_arcsec', sa.Float(), nullable=True),
    sa.Column('elongation', sa.Float(), nullable=True),
    sa.Column('sharpness', sa.Float(), nullable=True),
    sa.Column('pixel_scale', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_metrics_exposure_id_exposures')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_metrics_run_id_runs')),
    sa.PrimaryKeyConstraint('exposure_id', name=op.f('pk_metrics'))
    )
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metrics_run_id'), ['run_id'], unique=False)
    op.execute(CURRENT_FLAGS)
    op.execute(EXPOSURE_QUALITY)
    op.execute(QUALITY_SUMMARY)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metrics_run_id'))

    op.drop_table('metrics')
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.drop_index('ix_flags_exposure_id_id')

    op.drop_table('flags')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_step'))

    op.drop_table('runs')
