"""What keeps a log-in secret and ends it: the Discord access token sealed in the cookie,
and the sessions logged out in this process.

The session cookie (Starlette's, itsdangerous-signed, readable by whoever holds it)
carries `sid` (a random session id, 32 url-safe characters) and `tok`, the access token
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`) under a key derived
from `VOICETRACK_WEB_SECRET_KEY` by HKDF-SHA256: the cookie shows who is logged in, never
the token. Log-out puts the `sid` on `RevokedSessions` until the cookie could have
expired anyway (`session_max_age_s`), so a copy of the cookie taken before it is refused,
and revokes the token at Discord, which ends the session on every other replica (and
after a restart) at its next guild-list refresh.
"""

from __future__ import annotations

import base64
import secrets
import time

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_KEY_INFO = b"voicetrack-web discord access token v1"
"""HKDF `info` of the token key (a different purpose than signing the cookie)."""


def new_session_id() -> str:
    """A fresh random session id (24 random bytes, url-safe base64)."""
    return secrets.token_urlsafe(24)


class TokenBox:
    """Seals and opens the access token kept in the cookie."""

    def __init__(self, secret_key: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=TOKEN_KEY_INFO).derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, token: str) -> str:
        """`token` encrypted and authenticated (a Fernet token, url-safe text)."""
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str | None) -> str | None:
        """The token in `sealed`; None when absent, forged or sealed under another key."""
        if not sealed:
            return None
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, ValueError):
            return None


class RevokedSessions:
    """Session ids logged out in this process, each kept `ttl_s` seconds (the cookie's
    lifetime: past it the cookie is refused anyway), so the set stays bounded by the
    log-outs of one cookie lifetime."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def revoke(self, sid: str, now: float | None = None) -> None:
        """Refuse `sid` from now on (for `ttl_s` seconds)."""
        now = time.monotonic() if now is None else now
        self._prune(now)
        self._until[sid] = now + self.ttl_s

    def revoked(self, sid: str, now: float | None = None) -> bool:
        """Whether `sid` was logged out (and its cookie could still be within its age)."""
        now = time.monotonic() if now is None else now
        return self._until.get(sid, now) > now

    def _prune(self, now: float) -> None:
        for sid in [s for s, until in self._until.items() if until <= now]:
            del self._until[sid]
