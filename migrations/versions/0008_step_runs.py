"""step runs: an item's run points at the run of its step

One ``obsarch calibrate`` is one run with one child run per calibrated
frame: the child holds that frame's inputs and product (lineage per
product), the parent the step's parameters, state and summary.

It follows 0006: no catalog ever had a 0007 (the migration once numbered
so was released as 0012).

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01 15:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_parent_id'), ['parent_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_runs_parent_id_runs'), 'runs', ['parent_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_runs_parent_id_runs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_runs_parent_id'))
        batch_op.drop_column('parent_id')
