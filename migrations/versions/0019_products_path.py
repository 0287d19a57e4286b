"""products found by path (a step asks what occupies each path it writes)

``calibrate`` asks, for each frame, whether its output path is free or
already its own calibration (processing.runs.what_is_at): without an index
each question scanned the products table, 18 s for 2,000 frames against
20,000 products. A hash index on PostgreSQL: a path may be longer than a
B-tree entry may be (2,704 bytes), and only equality is asked.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 21:15:00
"""

from alembic import op


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f('ix_products_path'), 'products', ['path'], postgresql_using='hash')


def downgrade() -> None:
    op.drop_index(op.f('ix_products_path'), table_name='products')
