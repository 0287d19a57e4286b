"""tile-compressed (fpack) files stored with their table's header are read again

Before 2026-12-03 a tile-compressed HDU was stored with the cards of the
binary table that holds the compressed image (ZIMAGE, ZBITPIX, ZNAXIS1,
TTYPE1 = 'COMPRESSED_DATA', NAXIS1 the table's row length), so
``hdr[1]['NAXIS1']`` of an LCO frame was 24 and not its 1523 pixels, and
what ingest normalized from that HDU came from the wrong cards. Ingest now
stores the image's header, as astropy's CompImageHDU gives it, which holds
no ZIMAGE card. An unchanged file is never read again, so such files kept
the table's cards: this revision forgets the modification time of every
present file with a ZIMAGE = T card, and the next ``obsarch ingest`` of
its directory reads it again (counted as changed). Until then a step
refuses the file in one line that says so (processing.machinery).

Downgrade changes nothing: the files read again hold the right header.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03 23:30:00
"""

from alembic import op


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ix_header_cards_num (keyword, value_num, file_id) answers the inner select: logicals are 1/0 there
    op.execute("""
        UPDATE files SET mtime_ns = NULL
        WHERE status = 'present' AND id IN (
            SELECT file_id FROM header_cards WHERE keyword = 'ZIMAGE' AND value_num = 1 AND vtype = 'b')""")


def downgrade() -> None:
    pass
