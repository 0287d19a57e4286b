"""provenance: run inputs, products, run fingerprints and output

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 01:07:15.035041
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('products',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_products_file_id_files')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_products_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products'))
    )
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_products_file_id'), ['file_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_products_run_id'), ['run_id'], unique=False)

    op.create_table('run_inputs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('content', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_run_inputs_file_id_files')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_run_inputs_group_id_groups'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_inputs_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_inputs'))
    )
    with op.batch_alter_table('run_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_inputs_file_id'), ['file_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_inputs_run_id'), ['run_id'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('item', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('stdout', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('stderr', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_fingerprint'), ['fingerprint'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_fingerprint'))
        batch_op.drop_column('stderr')
        batch_op.drop_column('stdout')
        batch_op.drop_column('item')
        batch_op.drop_column('fingerprint')

    with op.batch_alter_table('run_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_inputs_run_id'))
        batch_op.drop_index(batch_op.f('ix_run_inputs_file_id'))

    op.drop_table('run_inputs')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_products_run_id'))
        batch_op.drop_index(batch_op.f('ix_products_file_id'))

    op.drop_table('products')
