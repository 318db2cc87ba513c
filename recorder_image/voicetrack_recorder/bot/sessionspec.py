"""The bot's RecordingSession objects as data: the guild's session name, the checks of
what a command or the bot's configuration puts in a spec, and what the bot reads of a
session's status. Pure: no API calls (`sessions.py` makes them)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from voicetrack.errors import InvalidInputError
from voicetrack.resources import SNOWFLAKE_PATTERN, SessionSpec, SessionState


def session_name(guild_id: str) -> str:
    """The bot's session name for a guild: `g-<guildId>` (at most 22 characters).

    Raises InvalidInputError when `guild_id` is not a snowflake (15-20 digits)."""
    check_snowflake("guild_id", guild_id)
    return f"g-{guild_id}"


def check_snowflake(field: str, value: str) -> None:
    """Raises InvalidInputError naming `field` unless `value` is a Discord snowflake (a
    string of 15-20 digits)."""
    if not isinstance(value, str) or not re.match(SNOWFLAKE_PATTERN, value):
        raise InvalidInputError(f"{field} must be a Discord snowflake (15-20 digits), "
                                f"got {value!r}")


def check_spec_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """A copy of `defaults` (camelCase partial `RecordingSession.spec`) once it is known
    to make valid sessions. Raises InvalidInputError naming the field, or one the bot sets
    itself (`guildId`, `channelId`, `requestedBy`, `meetingId`)."""
    if not isinstance(defaults, dict):
        raise InvalidInputError("spec defaults must be a JSON object")
    for fixed in ("guildId", "channelId", "requestedBy", "meetingId"):
        if fixed in defaults:
            raise InvalidInputError(f"spec defaults may not set {fixed}: the bot sets it")
    validate_spec({"guildId": "1" * 18, "channelId": "1" * 18, **defaults}, "spec defaults")
    return dict(defaults)


def validate_spec(spec: dict[str, Any], what: str) -> None:
    """Check `spec` (camelCase `RecordingSession.spec`) against `SessionSpec`.

    Raises InvalidInputError `<what>: <field>: <message>` for its first error."""
    try:
        SessionSpec.model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(f"{what}: {field}: {first['msg']}") from err


ENDED_STATES = (SessionState.REFUSED, SessionState.STOPPED, SessionState.FAILED)
"""States of the bot's own session that `BotSessions.start` deletes to record again."""


def session_state(obj: dict[str, Any]) -> SessionState | None:
    """The operator's `status.state` of a session object (`SessionState.of`)."""
    return SessionState.of(obj)


def progress_key(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What `BotSessions.follow` reports a change of: (`status.state`, chunks total, done,
    failed) of a session object."""
    status = obj.get("status") or {}
    chunks = status.get("chunks") or {}
    return (status.get("state"), chunks.get("total"), chunks.get("done"),
            chunks.get("failed"))
