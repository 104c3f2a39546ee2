"""Alembic environment: always runs on a connection handed in by ``royalty.store.migrations.upgrade``."""

from alembic import context

from royalty.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two replicas starting at once must not both migrate: serialise on an advisory lock.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(125779751761017)")  # 0x7265616c7479, "realty"
    context.run_migrations()
