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

KEY_NOT_YET_CAUSES = frozenset({"NoValidCryptorFound", "NoDecryptorForUser"})
"""Failures that a later epoch may cure: the frame was sealed with keys of a commit this
member has not processed yet (the sender switched first), or by a member it does not know
yet. A forged frame fails the same way, and for good once the wait is over."""


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
        self.last_cause: str | None = None

    def _user(self, user_id: str) -> UserDecryptStats:
        stats = self.stats.get(user_id)
        if stats is None:
            stats = self.stats[user_id] = UserDecryptStats()
        return stats

    def epoch(self) -> int | None:
        """The DAVE group's epoch now (None without a session or group)."""
        session = self._session()
        return None if session is None else session.epoch

    def decrypt(self, user_id: str, frame: bytes, *, count_failure: bool = True
                ) -> bytes | None:
        """The Opus packet inside `frame` sent by `user_id` (a snowflake string), or None
        when it cannot be opened (wrong or expired key, forged, unknown sender, a user id
        davey cannot take: `bad_user_id`). The cause
        of a failure is left in `last_cause` and, unless `count_failure` is False (the
        caller may retry after the next epoch change), counted."""
        stats = self._user(user_id)
        self.last_cause = None
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
            self.last_cause = failure_cause(exc)
        except (OverflowError, TypeError):  # a user id davey cannot take (not a u64)
            self.last_cause = "bad_user_id"
        else:
            if opus:
                if opus == frame:
                    stats.plain += 1
                else:
                    stats.decrypted += 1
                return opus
            self.last_cause = "empty"
        if count_failure:
            self.count_failure(user_id, self.last_cause)
        return None

    def identify(self, frame: bytes) -> tuple[str, bytes] | None:
        """Find which member of the DAVE group sealed `frame`: the one whose key opens it
        (an AEAD tag verifies only under the sender's key). Returns (user id, Opus) with
        the frame counted as decrypted for that user, or None (no session, silence, no
        member's key fits). The bot itself is never a candidate."""
        session = self._session()
        if session is None or frame == OPUS_SILENCE_FRAME:
            return None
        for user_id in session.get_user_ids():
            if int(user_id) == session.user_id:
                continue
            try:
                opus = session.decrypt(int(user_id), davey.MediaType.audio, frame)
            except ValueError:
                continue
            if opus and opus != frame:
                self._user(str(user_id)).decrypted += 1
                return str(user_id), opus
        return None

    def count_failure(self, user_id: str, cause: str) -> None:
        """Count one refused frame of `user_id` under `cause`."""
        self._user(user_id).failures[cause] += 1

    @property
    def decrypted_ok(self) -> int:
        """Frames opened or passed through, all users."""
        return sum(s.ok for s in self.stats.values())

    @property
    def failed(self) -> int:
        """Frames refused, all users and causes."""
        return sum(sum(s.failures.values()) for s in self.stats.values())
