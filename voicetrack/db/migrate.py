"""Alembic migrations, run programmatically (the operator runs `upgrade_head` at start-up).

Revisions (voicetrack/db/migrations/versions/): 0001 the old shape deployed bots have,
0002 the two-tier temp_recordings, 0003 recordings as final tracks, 0004 heartbeats.
Every revision downgrades. The functions are synchronous (Alembic drives a sync engine:
psycopg 3 or pysqlite); from async code call them with `asyncio.to_thread`.

Command line (URL from `--url`, else VOICETRACK_DATABASE_URL)::

    python -m voicetrack.db.migrate upgrade            # to head, prints each revision
    python -m voicetrack.db.migrate downgrade 0002     # or -1, or base
    python -m voicetrack.db.migrate stamp 0001         # adopt an old-shape database
    python -m voicetrack.db.migrate current
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from voicetrack.db.engine import default_database_url, sync_url
from voicetrack.errors import InvalidInputError, TemporaryFailure

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
"""The packaged ini for the `alembic` CLI (`alembic -c <ALEMBIC_INI> -x url=… …`)."""
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
OLD_SHAPE_REVISION = "0001"
"""The revision that describes the old (pre-two-tier) shape: `stamp` an adopted DB with it."""

log = logging.getLogger(__name__)


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic `Config` for the packaged migrations and `url` (default:
    VOICETRACK_DATABASE_URL); env.py leaves the caller's logging alone."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = sync_url(url if url is not None else default_database_url())
    config.attributes["programmatic"] = True
    config.attributes["applied"] = []
    return config


def _run(url: str | URL | None, action: str, revision: str) -> list[str]:
    config = alembic_config(url)
    try:
        if action == "upgrade":
            command.upgrade(config, revision)
        elif action == "downgrade":
            command.downgrade(config, revision)
        else:
            command.stamp(config, revision)
    except DBAPIError as exc:
        raise TemporaryFailure(f"database unavailable during {action}: {exc.orig}") from exc
    except Exception as exc:  # alembic raises CommandError/ResolutionError for bad revisions
        if type(exc).__module__.startswith("alembic"):
            raise InvalidInputError(f"revision: {action} {revision!r}: {exc}") from exc
        raise
    return list(config.attributes["applied"])


def upgrade_head(url: str | URL | None = None) -> list[str]:
    """Apply every pending revision; returns their ids in order (`[]` when already at
    head) and logs each on this module's logger. TemporaryFailure when the database is
    unreachable."""
    applied = _run(url, "upgrade", "head")
    log.info("database at head %s (%d revision(s) applied)", head_revision(), len(applied))
    return applied


def upgrade(url: str | URL | None, revision: str) -> list[str]:
    """Upgrade to `revision` (an id, `+1`, or `head`); returns the revisions applied."""
    return _run(url, "upgrade", revision)


def downgrade(url: str | URL | None, revision: str = "-1") -> list[str]:
    """Downgrade to `revision` (an id, `-1`, or `base`); returns the revisions reverted,
    newest first. InvalidInputError for an unknown revision."""
    return _run(url, "downgrade", revision)


def stamp(url: str | URL | None, revision: str) -> None:
    """Record `revision` as applied without running it (adopting an existing database:
    `stamp(url, OLD_SHAPE_REVISION)` then `upgrade_head(url)`)."""
    _run(url, "stamp", revision)


def head_revision() -> str:
    """The newest revision id of the packaged migrations."""
    head = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str | URL | None = None) -> str | None:
    """The revision the database is at (None: never migrated nor stamped)."""
    engine = create_engine(
        sync_url(url if url is not None else default_database_url()), poolclass=pool.NullPool
    )
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DBAPIError as exc:
        raise TemporaryFailure(f"database unavailable: {exc.orig}") from exc
    finally:
        engine.dispose()


def require_head(url: str | URL | None = None) -> None:
    """Refuse a database that is not at head: InvalidInputError naming both revisions."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise InvalidInputError(
            f"database at revision {current or 'none'}, code expects {head}: "
            "run `python -m voicetrack.db.migrate upgrade`"
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m voicetrack.db.migrate {upgrade,downgrade,stamp,current} [REV] [--url URL]`."""
    parser = argparse.ArgumentParser(prog="python -m voicetrack.db.migrate")
    parser.add_argument("action", choices=["upgrade", "downgrade", "stamp", "current", "head"])
    parser.add_argument("revision", nargs="?", help="upgrade: head; downgrade: -1; stamp: required")
    parser.add_argument("--url", default=None, help="default: $VOICETRACK_DATABASE_URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "upgrade":
            applied = upgrade(args.url, args.revision or "head")
            print(f"applied: {' '.join(applied) or 'nothing (already there)'}")
        elif args.action == "downgrade":
            reverted = downgrade(args.url, args.revision or "-1")
            print(f"reverted: {' '.join(reverted) or 'nothing'}")
        elif args.action == "stamp":
            if not args.revision:
                parser.error("stamp needs a revision, e.g. 0001")
            stamp(args.url, args.revision)
            print(f"stamped: {args.revision}")
        elif args.action == "current":
            print(current_revision(args.url) or "none")
        else:
            print(head_revision())
    except (InvalidInputError, TemporaryFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInputError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
