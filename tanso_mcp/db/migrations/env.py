"""Alembic environment: always handed a live connection by tanso_mcp.db.migrate."""

from alembic import context

from tanso_mcp.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tanso-mcp migrate` (tanso_mcp.db.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
