"""DAVE end-to-end decryption of received Opus frames, with per-user, per-cause counts.

Source: the DAVE protocol whitepaper (https://daveprotocol.com, "Frame decryption" and
"Silence packets"): an E2EE Opus frame carries a supplemental data trailer ending in the
magic marker 0xFAFA; the Opus silence frame `F8 FF FE` is sent unencrypted and passes
through. Decryption uses the connection's own `davey.DaveSession` (discord.py 2.7.1
`VoiceConnectionState.dave_session`), never a second MLS member: the bot is a member of the
call's group, so it holds every sender's ratchet. davey's decryptor refuses frames older
than the first it saw for a user and replays, tolerates reordering within 1000 frames and
keeps the previous epoch's keys for about 10 s after a commit; the receive pipeline
therefore decrypts after its jitter buffer, in sequence order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import davey

from voicetrack.audio import OPUS_SILENCE_FRAME

_NESTED_CAUSE = re.compile(r"DecryptionFailed\((\w+)")
_CAUSE = re.compile(r":\s*(\w+)")


@dataclass
class UserDecryptStats:
    """Frames of one user: `decrypted` (E2EE frames opened), `silence` (silence frames
    passed through), `plain` (frames passed through with DAVE off or in passthrough) and
    `failures` by cause (davey's error variant, e.g. `NoValidCryptorFound`)."""

    decrypted: int = 0
    silence: int = 0
    plain: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        """Frames that yielded Opus: decrypted, silence and plain."""
        return self.decrypted + self.silence + self.plain


def failure_cause(error: Exception) -> str:
    """The short cause name of a davey decryption error (`NoDecryptorForUser`,
    `NoValidCryptorFound`, `UnencryptedWhenPassthroughDisabled`, ...), or `other`."""
    text = str(error)
    match = _NESTED_CAUSE.search(text) or _CAUSE.search(text)
    return match.group(1) if match else "other"


class DaveDecryptor:
    """Opens E2EE Opus frames with the current DAVE session.

    `session` returns the connection's `davey.DaveSession`, or None while DAVE is off
    (protocol version 0: frames are plain Opus). It is called per frame because discord.py
    re-initialises the session on reconnects and protocol transitions.
    """

    def __init__(self, session: Callable[[], davey.DaveSession | None]) -> None:
        self._session = session
        self.stats: dict[str, UserDecryptStats] = {}

    def _user(self, user_id: str) -> UserDecryptStats:
        stats = self.stats.get(user_id)
        if stats is None:
            stats = self.stats[user_id] = UserDecryptStats()
        return stats

    def decrypt(self, user_id: str, frame: bytes) -> bytes | None:
        """The Opus packet inside `frame` sent by `user_id` (a snowflake string), or None
        when it cannot be opened (wrong or expired key, forged, unknown sender): the
        failure is counted under its cause and the frame is to be treated as lost."""
        stats = self._user(user_id)
        if frame == OPUS_SILENCE_FRAME:
            stats.silence += 1
            return frame
        session = self._session()
        if session is None:
            stats.plain += 1
            return frame
        try:
            opus = session.decrypt(int(user_id), davey.MediaType.audio, frame)
        except ValueError as exc:
            stats.failures[failure_cause(exc)] += 1
            return None
        if not opus:
            stats.failures["empty"] += 1
            return None
        if opus == frame:
            stats.plain += 1
        else:
            stats.decrypted += 1
        return opus

    @property
    def decrypted_ok(self) -> int:
        """Frames opened or passed through, all users."""
        return sum(s.ok for s in self.stats.values())

    @property
    def failed(self) -> int:
        """Frames refused, all users and causes."""
        return sum(sum(s.failures.values()) for s in self.stats.values())
