"""Alembic environment: runs the revisions synchronously on the sync twin of the async URL
(psycopg 3 / pysqlite), so `voicetrack.db.migrate.upgrade_head` can run from any thread.

The URL comes from `config.attributes["url"]` (programmatic use), else `-x url=…`, else
`sqlalchemy.url` in the ini, else VOICETRACK_DATABASE_URL. Each revision applied is logged
on the `voicetrack.db.migrate` logger and appended to `config.attributes["applied"]`.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool, text

from voicetrack.db.engine import default_database_url, sync_url
from voicetrack.db.schema import Base

config = context.config
log = logging.getLogger("voicetrack.db.migrate")

MIGRATION_LOCK_KEY = 0x766F6963657472  # "voicetr": the advisory lock the migrators share
"""PostgreSQL advisory lock key held (transaction scope) while revisions are applied."""

if config.config_file_name is not None and not config.attributes.get("programmatic"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> Any:
    url = config.attributes.get("url")
    if url is None:
        url = context.get_x_argument(as_dictionary=True).get("url")
    if url is None:
        url = config.get_main_option("sqlalchemy.url")
    return sync_url(url or default_database_url())


def _on_version_apply(ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
    direction = "upgrade" if step.is_upgrade else "downgrade"
    revision = step.up_revision_id
    script = ctx.script.get_revision(revision) if ctx.script is not None else None
    log.info("%s applied: %s (%s)", direction, revision, script.doc if script else "")
    config.attributes.setdefault("applied", []).append(revision)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=True,
                on_version_apply=_on_version_apply,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # one migrator at a time (operator replicas starting together): the
                    # others wait here, then find the database at head; released at commit
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": MIGRATION_LOCK_KEY})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
