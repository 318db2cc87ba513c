"""SSRC → Discord user id, from the voice gateway's JSON events.

Sources: Discord developer docs, "Voice Connections" and "Opcodes and Status Codes: Voice"
(the voice gateway v8 events; field names as discord.py 2.7.1's `DiscordVoiceWebSocket`
constants): op 5 SPEAKING `{"user_id", "ssrc", "speaking"}` announces a user's audio SSRC
(sent for every user before or as they start to send, including users who were already in
the channel when we joined); op 11 CLIENTS_CONNECT `{"user_ids": [...]}` lists users who
are (or just became) present; op 13 CLIENT_DISCONNECT `{"user_id"}` says a user left; the
older op 12 CLIENT_CONNECT `{"user_id", "audio_ssrc", "video_ssrc"}` may still carry an
audio SSRC. Video (and its RTX) SSRCs are never mapped: their packets are ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicetrack.resources import SNOWFLAKE_PATTERN

log = logging.getLogger(__name__)

OP_SPEAKING = 5
OP_CLIENTS_CONNECT = 11
OP_CLIENT_CONNECT = 12
OP_CLIENT_DISCONNECT = 13
OP_VIDEO = 18


class GatewayEventError(ValueError):
    """A voice gateway event lacks a field or has one of the wrong type; names it."""


def _snowflake(data: Mapping[str, Any], key: str, op: int) -> str:
    """`data[key]` as a user id string: a str or int of 15 to 20 ASCII digits
    (`SNOWFLAKE_PATTERN`, the one rule the chunk spec applies too; `str.isdigit` also takes
    "²" or "１２３", and a 25-digit id overflowed davey's u64). Raises GatewayEventError."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) \
            or re.fullmatch(SNOWFLAKE_PATTERN, str(value)) is None:
        raise GatewayEventError(f"op {op}: field {key!r} is {value!r}, not a user id")
    return str(value)


def _ssrc(data: Mapping[str, Any], key: str, op: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise GatewayEventError(f"op {op}: field {key!r} is {value!r}, not a 32-bit SSRC")
    return value


@dataclass
class SsrcMap:
    """Who sends on which SSRC, and who is in the channel.

    `users` holds the user ids (snowflake strings) present in the channel; `video` the
    SSRCs announced for video, whose packets are to be ignored.
    """

    _by_ssrc: dict[int, str] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    video: set[int] = field(default_factory=set)

    def user_for(self, ssrc: int) -> str | None:
        """The user id sending audio on `ssrc`, or None when unknown (not yet announced,
        or its user has left)."""
        return self._by_ssrc.get(ssrc)

    def audio(self) -> dict[int, str]:
        """A copy of the audio mapping now: {SSRC: user id}."""
        return dict(self._by_ssrc)

    def ssrcs_of(self, user_id: str) -> list[int]:
        """The audio SSRCs currently mapped to `user_id`."""
        return [s for s, u in self._by_ssrc.items() if u == user_id]

    def map(self, ssrc: int, user_id: str) -> bool:
        """Map `ssrc` to `user_id`; True when this is new information."""
        self.users.add(user_id)
        self.video.discard(ssrc)
        if self._by_ssrc.get(ssrc) == user_id:
            return False
        if ssrc in self._by_ssrc:
            log.info("SSRC %d moves from user %s to user %s", ssrc, self._by_ssrc[ssrc], user_id)
        self._by_ssrc[ssrc] = user_id
        return True

    def handle(self, op: int, data: Mapping[str, Any]) -> list[int]:
        """Apply one voice gateway event (`op`, its `d` object). Returns the SSRCs that
        became mapped by it (so held packets can be released). Other opcodes are ignored.
        Raises GatewayEventError naming the field when a handled event is malformed."""
        if not isinstance(data, Mapping):
            raise GatewayEventError(f"op {op}: payload is {type(data).__name__}, not an object")
        if op == OP_SPEAKING:
            ssrc = _ssrc(data, "ssrc", op)
            return [ssrc] if self.map(ssrc, _snowflake(data, "user_id", op)) else []
        if op == OP_CLIENTS_CONNECT:
            ids = data.get("user_ids")
            if not isinstance(ids, list):
                raise GatewayEventError(f"op {op}: field 'user_ids' is {ids!r}, not a list")
            for i in range(len(ids)):
                self.users.add(_snowflake({"user_id": ids[i]}, "user_id", op))
            return []
        if op == OP_CLIENT_CONNECT:
            user = _snowflake(data, "user_id", op)
            self.users.add(user)
            for key in ("video_ssrc", "rtx_ssrc"):
                if data.get(key):
                    self.video.add(_ssrc(data, key, op))
            if data.get("audio_ssrc"):
                ssrc = _ssrc(data, "audio_ssrc", op)
                return [ssrc] if self.map(ssrc, user) else []
            return []
        if op == OP_VIDEO:
            for stream in data.get("streams") or []:
                for key in ("ssrc", "rtx_ssrc"):
                    if isinstance(stream, Mapping) and stream.get(key):
                        self.video.add(_ssrc(stream, key, op))
            return []
        if op == OP_CLIENT_DISCONNECT:
            user = _snowflake(data, "user_id", op)
            self.users.discard(user)
            for ssrc in self.ssrcs_of(user):
                del self._by_ssrc[ssrc]
            return []
        return []
