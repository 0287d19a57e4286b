"""groups and offsets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 01:01:42.230594
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('params_json', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_groups_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
    sa.UniqueConstraint('name', name=op.f('uq_groups_name'))
    )
    op.create_table('group_members',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_group_members_exposure_id_exposures')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_group_members_group_id_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'exposure_id', name=op.f('pk_group_members'))
    )
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_group_members_exposure_id'), ['exposure_id'], unique=False)

    op.create_table('offsets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exposure_id', sa.Integer(), nullable=False),
    sa.Column('reference_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('dx', sa.Float(), nullable=True),
    sa.Column('dy', sa.Float(), nullable=True),
    sa.Column('rotation', sa.Float(), nullable=True),
    sa.Column('scale', sa.Float(), nullable=True),
    sa.Column('dx_err', sa.Float(), nullable=True),
    sa.Column('dy_err', sa.Float(), nullable=True),
    sa.Column('rotation_err', sa.Float(), nullable=True),
    sa.Column('scale_err', sa.Float(), nullable=True),
    sa.Column('nmatched', sa.Integer(), nullable=True),
    sa.Column('residual', sa.Float(), nullable=True),
    sa.Column('chain_json', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['exposure_id'], ['exposures.id'], name=op.f('fk_offsets_exposure_id_exposures')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_offsets_group_id_groups'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['reference_id'], ['exposures.id'], name=op.f('fk_offsets_reference_id_exposures')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_offsets_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_offsets'))
    )
    with op.batch_alter_table('offsets', schema=None) as batch_op:
        batch_op.create_index('ix_offsets_exposure_id_id', ['exposure_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('offsets', schema=None) as batch_op:
        batch_op.drop_index('ix_offsets_exposure_id_id')

    op.drop_table('offsets')
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_members_exposure_id'))

    op.drop_table('group_members')
    op.drop_table('groups')
