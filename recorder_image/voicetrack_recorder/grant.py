"""The recorder's upload grant, kept current: the operator renews the session's grant in
its Secret before it expires, and mints it again when the key that signed it is no longer
its own (`voicetrack.uploadgrant`, operator `services.grants`); the recorder's environment
holds only the grant its pod started with.

`RenewingGrantWriter` writes raw tracks like `uploader.GrantWriter` and reads the Secret
again (`SecretGrantSource`, through the Kubernetes API as the recorder's own
ServiceAccount, whose Role may `get` that one Secret; each read bounded like every
recorder call, `kube.API_TIMEOUTS`) when:

- the grant it holds has less than `RECORDER_SHARE` of its renewal margin left (the
  operator renews at the whole margin, so the new one is there by then); at most once per
  `READ_EVERY_S` while no newer grant shows up;
- S3 refuses a POST with a refusal a newer grant can cure (`REFRESH_CODES`): 403
  AccessDenied is S3's answer to an expired policy ("Invalid according to Policy: Policy
  expired", AWS and SeaweedFS 4.x) and to a revoked role session; InvalidAccessKeyId and
  SignatureDoesNotMatch to a signing key that was rotated away; ExpiredToken to expired
  temporary credentials. With a different grant in the Secret, the POST is tried again at
  once. With the same one, it raises `GrantAwaited` (a TemporaryFailure, wherever the grant
  is in its life): the uploader retries with backoff, rereading the Secret each time,
  while the chunks wait in the spool (nothing is deleted; the recording goes on), until
  the operator's new grant arrives or the recorder's stop deadline passes, when the
  uploader gives up with this reason. After a refusal any grant other than the one
  refused is taken, even one that ends no later (the operator's re-signed grant after a
  key rotation ends when the old one did: its end is capped by the session's). A refusal
  of the policy's conditions ("Policy Condition failed": a key, size or Content-Type the
  grant does not allow) is no matter of time and raises GrantRefused, and so does a grant
  refused for `REFUSED_GIVE_UP_S` with no other grant in the Secret (a bucket policy
  that denies, a wrong bucket, an identity without write access: waiting longer would
  only hide it behind a recorder that looks healthy).

A Secret it cannot read (API away, RBAC, no answer within the timeout) is logged and the
grant it holds is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from kubernetes import client

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.kubeclient import translate_api_error
from voicetrack.uploadgrant import (
    GrantRefused,
    UploadGrant,
    post_object,
    renewal_due,
)
from voicetrack_recorder.kube import API_TIMEOUTS, CLIENT_ERRORS, ApiTimeouts, bounded_client

log = logging.getLogger(__name__)

RECORDER_SHARE = 0.5
"""The recorder reads the Secret when its grant has less than this share of its renewal
margin left (`voicetrack.uploadgrant.renewal_due`): after the operator's renewal."""
READ_EVERY_S = 5.0
"""At most one read of the Secret per this many seconds (monotonic) for a grant near its
end, while the Secret still holds the same grant."""
REFRESH_CODES = frozenset({"AccessDenied", "ExpiredToken", "TokenRefreshRequired",
                           "InvalidAccessKeyId", "SignatureDoesNotMatch"})
"""S3 error codes of a refused POST that a newer grant may cure: an expired policy or a
revoked role session (AccessDenied), expired temporary credentials (ExpiredToken,
TokenRefreshRequired on AWS), a signing key rotated away (InvalidAccessKeyId, or
SignatureDoesNotMatch when its secret changed)."""
REFUSED_GIVE_UP_S = 900.0
"""A grant S3 has refused for this long (monotonic s, from its first refusal) while the
Secret offers no other is refused for good (GrantRefused): well past the operator's
re-signing (its checks come every 30 s) and a temporary credentials' handover."""
CONDITION_FAILED = "Policy Condition failed"
"""In an AccessDenied's message: the POST breaks the policy's conditions (S3 "POST Object"
errors, AWS and SeaweedFS); no newer grant of the same conditions cures that."""


def _curable(err: GrantRefused) -> bool:
    """Whether a newer grant may cure S3's refusal `err` (`REFRESH_CODES`, and not a
    breach of the policy's conditions)."""
    return err.code in REFRESH_CODES and CONDITION_FAILED not in str(err)


class GrantAwaited(TemporaryFailure):
    """S3 refuses the grant held, and the Secret holds no newer one yet: retried (the
    uploader's backoff) until the operator's new grant arrives."""


class GrantSource(Protocol):
    """Where the current grant is read: `read() -> UploadGrant`, raising TemporaryFailure
    (retry later), NotFoundError or InvalidInputError."""

    def read(self) -> UploadGrant: ...


class SecretGrantSource:
    """The grant in Secret `namespace/name`, key `uploadGrant` (the operator's
    `build_upload_grant_secret`). One read is bounded by `timeouts.request` (an API
    server that accepts and never answers must not hold the upload path), on a client
    urllib3 does not retry (`kube.bounded_client`)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str,
                 timeouts: ApiTimeouts = API_TIMEOUTS) -> None:
        self.core = client.CoreV1Api(bounded_client(api))
        self.timeouts = timeouts
        self.namespace = namespace
        self.name = name

    def read(self) -> UploadGrant:
        """The grant the Secret holds now. Raises TemporaryFailure (API unreachable or no
        answer within `timeouts.request`, 401, 403, 429, 5xx: `translate_api_error`),
        NotFoundError (no such Secret), InvalidInputError (no `uploadGrant` key, or not a
        grant: `UploadGrant.from_secret_data`)."""
        what = f"get Secret {self.namespace}/{self.name}"
        try:
            secret = self.core.read_namespaced_secret(self.name, self.namespace,
                                                      _request_timeout=self.timeouts.request)
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, what) from err
        return UploadGrant.from_secret_data(secret.data, f"{self.namespace}/{self.name}")


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
        self._refused: tuple[UploadGrant, float] | None = None
        """The grant S3 refused and when it first did (monotonic s)."""

    def put_file(self, key: str, path: str,
                 content_type: str = "application/octet-stream") -> None:
        """POST `path` as `key` under the current grant (`post_object`). Raises
        TemporaryFailure when S3 or the API server is away, GrantAwaited (a
        TemporaryFailure) while a refused grant awaits a newer one; GrantRefused
        (InvalidInputError) for a refusal of the policy's conditions or one no grant cures
        (not in `REFRESH_CODES`); InvalidInputError for a key outside the grant's
        prefix."""
        if renewal_due(self.grant, self.clock(), RECORDER_SHARE) \
                and time.monotonic() - self._last_read >= READ_EVERY_S:
            self.refresh()
        try:
            post_object(self.endpoint, self.grant, key, path, content_type)
            return
        except GrantRefused as first:
            err = first
            if not _curable(err):
                raise
            held = self.grant
            if self.refresh(after_refusal=True) and self.grant != held:
                log.info("POST %s refused (%s): retrying with the renewed grant", key,
                         err.code)
                try:
                    post_object(self.endpoint, self.grant, key, path, content_type)
                    return
                except GrantRefused as again:  # e.g. S3 does not know the new key yet:
                    if not _curable(again):  # awaited as the first one was
                        raise
                    err, held = again, self.grant
            now = time.monotonic()
            if self._refused is None or self._refused[0] != held:
                self._refused = (held, now)
            elif now - self._refused[1] >= REFUSED_GIVE_UP_S:
                raise GrantRefused(
                    f"upload grant signed by {held.access_key or '?'} refused for "
                    f"{now - self._refused[1]:.0f} s with no other grant in the Secret: "
                    f"{err}", err.status, err.code) from err
            why = "not renewed yet" if renewal_due(self.grant, self.clock()) else \
                "no newer grant yet (keys rotated or the role session revoked?)"
            # from None: the refusal is not the permanent cause (`faults`)
            raise GrantAwaited(f"upload grant signed by {self.grant.access_key or '?'}, "
                               f"ending {self.grant.expires_at.isoformat()}, refused and "
                               f"{why}: {err}", delay=2) from None

    def refresh(self, after_refusal: bool = False) -> bool:
        """Read the source; take its grant when it ends later than the one held or, when
        S3 refused the one held (`after_refusal`), when it is any other grant. True when
        the source answered. Errors are logged, never raised (the held grant stays)."""
        self._last_read = time.monotonic()
        try:
            fresh = self.source.read()
        except (TemporaryFailure, InvalidInputError) as err:
            log.warning("upload grant not refreshed: %s", err)
            return False
        if fresh.expires_at > self.grant.expires_at or (after_refusal and fresh != self.grant):
            self.renewals += 1
            log.info("upload grant renewed: now ends %s, signed by %s",
                     fresh.expires_at.isoformat(), fresh.access_key or "?")
            self.grant = fresh
        return True
