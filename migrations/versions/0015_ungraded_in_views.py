"""the quality views say 'ungraded' for a frame nobody and no rule graded

The query language, the README and every refusal call such a frame
``ungraded`` (``grade == 'ungraded'``), and it is never NULL there, so that
``grade != 'bad'`` keeps it. The views said ``unreviewed`` (quality_summary)
and NULL (exposure_quality): ``SELECT ... FROM exposure_quality WHERE grade
!= 'bad'`` in ``obsarch sql`` silently dropped every ungraded frame. Both now
say ``ungraded``, as the language does.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 02:10:00
"""

from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def _quality_views(ungraded: str, grade: str) -> tuple[str, str]:
    exposure_quality = f"""
CREATE VIEW exposure_quality AS
SELECT e.id AS exposure_id, e.frame_number, e.night, e.band, e.frame_type, e.object, e.date_obs, e.mjd,
       e.exptime, e.airmass, m.background, m.background_rms, m.nstars, m.fwhm, m.fwhm_minor, m.fwhm_arcsec,
       m.elongation, m.sharpness, m.saturated_fraction, m.error AS metrics_error,
       {grade} AS grade, c.reason, c.source AS flag_source, c.note
FROM exposures e
LEFT JOIN metrics m ON m.exposure_id = e.id
LEFT JOIN current_flags c ON c.exposure_id = e.id
"""
    quality_summary = f"""
CREATE VIEW quality_summary AS
SELECT e.night, e.band, COALESCE(c.grade, '{ungraded}') AS grade, COUNT(*) AS exposures
FROM exposures e
LEFT JOIN current_flags c ON c.exposure_id = e.id
WHERE e.frame_type = 'science'
GROUP BY e.night, e.band, COALESCE(c.grade, '{ungraded}')
"""
    return exposure_quality, quality_summary


def _replace(ungraded: str, grade: str) -> None:
    op.execute("DROP VIEW IF EXISTS quality_summary")
    op.execute("DROP VIEW IF EXISTS exposure_quality")
    for create in _quality_views(ungraded, grade):
        op.execute(create)


def upgrade() -> None:
    _replace("ungraded", "COALESCE(c.grade, 'ungraded')")


def downgrade() -> None:
    _replace("unreviewed", "c.grade")
