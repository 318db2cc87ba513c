"""`StoreBase`: what every store shares, one `AsyncSession` held by the caller's transaction.

A store never commits and never opens a transaction (STYLE.md item 12): the caller
(`voicetrack.db.service.RecordingService`) owns `async with session.begin()`. Input is
checked before any statement runs (`voicetrack.db.checks`), so bad input raises
`InvalidInputError` (or `NotFoundError`) naming the field and changes nothing. Database
client errors are not caught here; the service translates them at its boundary.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


class StoreBase:
    """Statements on `session` (an `AsyncSession` in the caller's transaction); never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        """`postgresql` or `sqlite`: the bound engine's dialect name."""
        return self.session.get_bind().dialect.name

    def _insert(self, entity: type[Any]) -> Any:
        """The dialect's `INSERT` (with `ON CONFLICT`) for `entity`."""
        if self._dialect == "postgresql":
            return postgresql.insert(entity)
        return sqlite.insert(entity)
