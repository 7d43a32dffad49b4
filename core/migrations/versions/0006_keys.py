"""keys: when each API key was last used (written by the API at most once a minute per key)

Revision ID: 0006_keys
Revises: 0003 (0003_report_indexes.py)
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_keys"
down_revision = "0005_controls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("last_used_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
