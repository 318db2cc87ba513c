"""Input checks shared by the stores: each returns the value (normalised) or raises
`InvalidInputError` naming the field, before any statement runs; plus ids, the clock and
the SQL rank of a transcode status (the forward-only rule)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case
from sqlalchemy.orm import InstrumentedAttribute

from voicetrack.db.schema import ID_LENGTH, TRANSCODE_RANK, TranscodeStatus
from voicetrack.errors import InvalidInputError
from voicetrack.resources import MEETING_ID_PATTERN, SNOWFLAKE_PATTERN

_ID_RE = re.compile(MEETING_ID_PATTERN)
_SNOWFLAKE_RE = re.compile(SNOWFLAKE_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
_INT32_MAX = 2**31 - 1


def new_id() -> str:
    """A fresh 16-character id (`secrets.token_hex(8)`)."""
    return secrets.token_hex(ID_LENGTH // 2)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def check_id(field: str, value: object) -> str:
    """A 16-character id (meeting or row id)."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInputError(f"{field}: expected 16 letters/digits, got {value!r}")
    return value


def check_snowflake(field: str, value: object) -> str:
    """A Discord snowflake: 15-20 digits, as a string."""
    if not isinstance(value, str) or not _SNOWFLAKE_RE.match(value):
        raise InvalidInputError(
            f"{field}: expected a Discord snowflake (15-20 digits), got {value!r}"
        )
    return value


def check_text(field: str, value: object, max_len: int) -> str:
    """A non-blank string of at most `max_len` characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field}: expected a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise InvalidInputError(f"{field}: {len(value)} characters, at most {max_len}")
    return value


def check_opt_text(field: str, value: object, max_len: int) -> str | None:
    """None, or `check_text`."""
    return None if value is None else check_text(field, value, max_len)


def check_sha256(field: str, value: object) -> str:
    """A sha256 digest: 64 lowercase hex digits."""
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise InvalidInputError(f"{field}: expected 64 lowercase hex digits, got {value!r}")
    return value


def check_count(field: str, value: object, maximum: int = _INT32_MAX) -> int:
    """An int (not a bool) in `[0, maximum]` (a count, bytes or milliseconds)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidInputError(f"{field}: expected an integer in [0, {maximum}], got {value!r}")
    return value


def check_time(field: str, value: object) -> datetime:
    """A timezone-aware datetime, returned in UTC."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{field}: expected a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def check_status(value: object) -> TranscodeStatus:
    """A `TranscodeStatus` or its string value."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return TranscodeStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in TranscodeStatus)
        raise InvalidInputError(f"status: {value!r} is not one of {allowed}") from None


def check_ids(field: str, value: str | Iterable[str]) -> list[str]:
    """One id or several: sorted, without duplicates; at least one."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise InvalidInputError(f"{field}: expected at least one id")
    return sorted({check_id(field, item) for item in items})


def status_rank(column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[int]:
    """SQL expression: the forward-only rank of a transcode status column."""
    return case(
        *((column == status.value, rank) for status, rank in TRANSCODE_RANK.items()),
        else_=-1,
    )


def check_format(field: str, value: object) -> str:
    """An output format name: 1-16 lowercase letters/digits (`mp3`, `flac`)."""
    if not isinstance(value, str) or not _FORMAT_RE.match(value):
        raise InvalidInputError(f"{field}: expected a short lowercase name, got {value!r}")
    return value
