"""The recorder's upload grant, kept current: the operator renews the session's grant in
its Secret before it expires (`voicetrack.uploadgrant`, operator `services.grants`); the
recorder's environment holds only the grant its pod started with.

`RenewingGrantWriter` writes raw tracks like `uploader.GrantWriter` and reads the Secret
again (`SecretGrantSource`, through the Kubernetes API as the recorder's own
ServiceAccount, whose Role may `get` that one Secret) when:

- the grant it holds has less than `RECORDER_SHARE` of its renewal margin left (the
  operator renews at the whole margin, so the new one is there by then); at most once per
  `READ_EVERY_S` while no newer grant shows up;
- S3 refuses a POST with a refusal a newer grant can cure (`REFRESH_CODES`: 403
  AccessDenied is S3's answer to an expired policy, "Invalid according to Policy: Policy
  expired", on AWS and SeaweedFS 4.x). With a different grant in the Secret, the POST is
  tried again at once. With the same one: a grant in its renewal margin (or past its end:
  S3's clock may run ahead of ours) raises TemporaryFailure (the uploader retries with
  backoff while the operator renews it; the audio waits in the spool); one far from its
  end is a real refusal and raises it.

A Secret it cannot read (API away, RBAC) is logged and the grant it holds is used.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from kubernetes import client

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.kubeclient import translate_api_error
from voicetrack.uploadgrant import (
    GRANT_SECRET_KEY,
    GrantRefused,
    UploadGrant,
    post_object,
    renewal_due,
)
from voicetrack_recorder.kube import CLIENT_ERRORS

log = logging.getLogger(__name__)

RECORDER_SHARE = 0.5
"""The recorder reads the Secret when its grant has less than this share of its renewal
margin left (`voicetrack.uploadgrant.renewal_due`): after the operator's renewal."""
READ_EVERY_S = 5.0
"""At most one read of the Secret per this many seconds (monotonic) for a grant near its
end, while the Secret still holds the same grant."""
REFRESH_CODES = frozenset({"AccessDenied", "ExpiredToken", "TokenRefreshRequired",
                           "InvalidAccessKeyId"})
"""S3 error codes of a refused POST that a renewed grant may cure: an expired policy
(AccessDenied), expired temporary credentials (ExpiredToken, TokenRefreshRequired on AWS;
InvalidAccessKeyId once the role session is gone)."""


class GrantSource(Protocol):
    """Where the current grant is read: `read() -> UploadGrant`, raising TemporaryFailure
    (retry later), NotFoundError or InvalidInputError."""

    def read(self) -> UploadGrant: ...


class SecretGrantSource:
    """The grant in Secret `namespace/name`, key `uploadGrant` (the operator's
    `build_upload_grant_secret`)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    def read(self) -> UploadGrant:
        """The grant the Secret holds now. Raises TemporaryFailure (API unreachable, 401,
        403, 429, 5xx: `translate_api_error`), NotFoundError (no such Secret),
        InvalidInputError (no `uploadGrant` key, or not a grant)."""
        what = f"get Secret {self.namespace}/{self.name}"
        try:
            secret = self.core.read_namespaced_secret(self.name, self.namespace)
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, what) from err
        value = (secret.data or {}).get(GRANT_SECRET_KEY)
        if value is None:
            raise InvalidInputError(f"Secret {self.namespace}/{self.name} has no key "
                                    f"{GRANT_SECRET_KEY!r}")
        try:
            return UploadGrant.model_validate_json(base64.b64decode(value, validate=True))
        except (ValueError, binascii.Error) as err:
            raise InvalidInputError(f"Secret {self.namespace}/{self.name} key "
                                    f"{GRANT_SECRET_KEY!r} is not an upload grant: {err}"
                                    ) from err


class RenewingGrantWriter:
    """Writes raw tracks with the session's upload grant (an `uploader.RawWriter`),
    taking renewed grants from `source` (see the module docstring). `clock` gives the
    aware UTC now (tests move it)."""

    def __init__(self, endpoint: str, grant: UploadGrant, source: GrantSource,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.endpoint = endpoint
        self.grant = grant
        self.source = source
        self.clock = clock
        self.renewals = 0
        """How many newer grants it took from the source."""
        self._last_read = float("-inf")

    def put_file(self, key: str, path: str,
                 content_type: str = "application/octet-stream") -> None:
        """POST `path` as `key` under the current grant (`post_object`). Raises
        TemporaryFailure when S3 or the API server is away, or while a refused grant near
        or past its end awaits its renewal; GrantRefused (InvalidInputError) for a refusal
        a newer grant does not cure; InvalidInputError for a key outside the grant's
        prefix."""
        if renewal_due(self.grant, self.clock(), RECORDER_SHARE) \
                and time.monotonic() - self._last_read >= READ_EVERY_S:
            self.refresh()
        try:
            post_object(self.endpoint, self.grant, key, path, content_type)
            return
        except GrantRefused as err:
            if err.code not in REFRESH_CODES:
                raise
            held = self.grant
            if self.refresh() and self.grant != held:
                log.info("POST %s refused (%s): retrying with the renewed grant", key,
                         err.code)
                post_object(self.endpoint, self.grant, key, path, content_type)
                return
            if renewal_due(self.grant, self.clock()):
                # from None: the refusal is not the permanent cause (`faults`)
                raise TemporaryFailure(f"upload grant ending "
                                       f"{self.grant.expires_at.isoformat()} refused and not "
                                       f"renewed yet ({err})", delay=2) from None
            raise

    def refresh(self) -> bool:
        """Read the source; take its grant when it ends later than the one held. True when
        the source answered. Errors are logged, never raised (the held grant stays)."""
        self._last_read = time.monotonic()
        try:
            fresh = self.source.read()
        except (TemporaryFailure, InvalidInputError) as err:
            log.warning("upload grant not refreshed: %s", err)
            return False
        if fresh.expires_at > self.grant.expires_at:
            self.renewals += 1
            log.info("upload grant renewed: now ends %s", fresh.expires_at.isoformat())
            self.grant = fresh
        return True
