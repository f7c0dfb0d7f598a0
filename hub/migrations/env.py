"""Alembic environment: run against the connection handed in by hub.db.migrate,
or, from the alembic CLI, against HUB_DATABASE_URL / sqlalchemy.url."""
from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from hub.tables import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return

    async def _async() -> None:
        engine = create_async_engine(config.get_main_option("sqlalchemy.url"))
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(_async())


run_migrations_online()
