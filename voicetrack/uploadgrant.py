"""Upload grants: an S3 POST policy that lets a recorder write under its own session's
chunk prefix and nothing else (issue 11 item 5), renewed before it expires (issue 15).

The operator holds the S3 keys and mints, per session, a browser-based upload policy (S3
API reference, "POST Object" and "Creating a POST Policy": a base64 JSON policy with
`expiration` and `conditions`, signed with SigV4) whose conditions are the bucket, `$key`
starting with `<prefix>/<guild>/<meeting>/chunks/`, any `$Content-Type`, and a
`content-length-range`. The recorder gets only the signed form fields (a Secret), never a
key: with them it can POST objects under that prefix; every other request (GET, DELETE,
LIST, a POST outside the prefix, a tampered policy) is refused by S3 itself (checked on
SeaweedFS 4.x, which enforces the conditions: tests/integration/test_upload_grant.py).
That prefix holds only what the recorder writes: the transcoder's outputs, pieces and
manifests lie under `<prefix>/<guild>/<meeting>/outputs/` (`voicetrack.layout`), which the
grant cannot write (tests/integration/test_upload_grant_outputs.py).

Credentials: the operator's (`s3credentials.credentials_provider`): its explicit keys, else
the AWS chain. Temporary credentials (IRSA, ECS, EC2, AWS_SESSION_TOKEN) add the
`x-amz-security-token` form field and its equality condition to the policy (minio's
`PostPolicy.form_data`, as the SigV4 POST policy documentation asks), and S3 refuses the
form once that token has expired, whatever the policy's `expiration` says; so the grant is
capped at the credentials' expiry (`mint_upload_grant`) and its `expiresAt` tells the
truth.

Renewal: a grant is renewed when its remaining life falls below `renewal_margin` (the
smaller of `RENEWAL_MARGIN` and a third of its lifetime: `renewal_due`). The operator's
observe timer mints a new grant into the session's Secret then (and whenever the Secret is
missing or unreadable), with the credentials it holds at that moment. minio's providers
fetch temporary credentials again only about 10 s before they expire, and a grant cannot
outlive the credentials that signed it, so under IRSA the renewal that reaches into the next
role session lands in those last seconds (operator `services.grants`). The recorder starts
with the grant of its environment ($VOICETRACK_S3_UPLOAD_GRANT, fixed for the pod's life)
and reads the current one from the Secret ($VOICETRACK_S3_UPLOAD_GRANT_SECRET, which its own
Role may `get`) when the one it holds nears its end, or when S3 refuses a POST as
`GrantRefused` (`voicetrack_recorder.grant`). S3's answer to an expired policy is 403
`AccessDenied`, "Invalid according to Policy: Policy expired" (SeaweedFS 4.x, checked by
tests/integration/test_upload_grant_renewal.py; AWS documents the same message); an
expired session token is `ExpiredToken` on AWS.

One home for the contract: `UploadGrant` is the JSON both sides read (and
`UploadGrant.from_secret_data` the one decoding of its Secret; `access_key` the key that
signed it, which the operator compares with its current one to mint again after a
rotation); `mint_upload_grant` runs in the operator (no I/O: the region is given, so minio
asks nothing), and `post_object` in the recorder.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.credentials import StaticProvider
from minio.datatypes import PostPolicy
from pydantic import BaseModel, ConfigDict, Field

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.objectstore import S3Settings
from voicetrack.s3credentials import credentials_provider

GRANT_ENV = "VOICETRACK_S3_UPLOAD_GRANT"
"""The recorder's variable holding the grant's JSON (from its session's Secret)."""
GRANT_SECRET_KEY = "uploadGrant"
"""The key of the grant in the session's Secret."""
GRANT_SECRET_ENV = "VOICETRACK_S3_UPLOAD_GRANT_SECRET"
"""The recorder's variable naming the Secret (in its namespace) it reads renewed grants
from; unset: the grant of its environment is all it has."""
GRANT_SECONDS_ENV = "VOICETRACK_UPLOAD_GRANT_SECONDS"
"""The operator's variable: each grant's lifetime (s) from its minting; unset or 0: until
the session's `limits.maxDurationSeconds` plus an hour."""
MIN_GRANT_SECONDS = 60
"""The shortest lifetime (s) $VOICETRACK_UPLOAD_GRANT_SECONDS may set: a grant must outlive
a few chunk uploads and the operator's observe interval."""
RENEWAL_MARGIN = timedelta(minutes=10)
"""A grant is renewed when less than this (or a third of its lifetime, if smaller) remains:
room for the operator's observe interval, an API server or S3 hiccup, and the recorder's
read of the Secret."""
MAX_OBJECT_BYTES = 5 * 1024**3
"""S3's bound for one POST upload (5 GiB, S3 API reference "POST Object")."""


class GrantRefused(InvalidInputError):
    """S3 refused a POST under a grant (a 4xx): `status` and S3's error `code` (`AccessDenied`
    for an expired or violated policy, `SignatureDoesNotMatch` for a tampered one,
    `ExpiredToken` for expired temporary credentials on AWS)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class UploadGrant(BaseModel):
    """A signed POST policy: `bucket`, the key `prefix` it allows, its `expiresAt`, and the
    form `fields` to send with each upload (`policy`, `x-amz-algorithm`,
    `x-amz-credential`, `x-amz-date`, `x-amz-signature`, and `x-amz-security-token` when
    signed with temporary credentials)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    bucket: str
    prefix: str = Field(min_length=1)
    expires_at: datetime = Field(alias="expiresAt")
    fields: dict[str, str]

    @property
    def issued_at(self) -> datetime:
        """When it was signed: its `x-amz-date` field (SigV4, `YYYYMMDDTHHMMSSZ`, UTC).
        Raises InvalidInputError when the field is missing or not such a date."""
        text = self.fields.get("x-amz-date", "")
        try:
            return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError as err:
            raise InvalidInputError(f"upload grant field x-amz-date {text!r} is not a "
                                    "SigV4 date (YYYYMMDDTHHMMSSZ)") from err

    @property
    def access_key(self) -> str:
        """The access key id that signed it: the first part of its `x-amz-credential`
        field (SigV4: `<access key>/<YYYYMMDD>/<region>/s3/aws4_request`); "" when the
        field is missing."""
        return self.fields.get("x-amz-credential", "").split("/", 1)[0]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_secret_data(cls, data: Mapping[str, object] | None, where: str) -> UploadGrant:
        """The grant in a Secret's `data` (base64 values, as the API returns them) under
        `GRANT_SECRET_KEY`: the one decoding of the grant Secret, for the operator (which
        renews it) and the recorder (which reads it). `where` names the Secret in errors
        (`ns/name`). Raises InvalidInputError naming the key when it is missing, not
        base64, or not a grant."""
        value = (data or {}).get(GRANT_SECRET_KEY)
        if not isinstance(value, str):
            raise InvalidInputError(f"Secret {where} has no key {GRANT_SECRET_KEY!r}")
        try:
            return cls.model_validate_json(base64.b64decode(value, validate=True))
        except (ValueError, binascii.Error) as err:
            raise InvalidInputError(f"Secret {where} key {GRANT_SECRET_KEY!r} is not an "
                                    f"upload grant: {err}") from err

    @classmethod
    def from_env(cls) -> UploadGrant | None:
        """The grant in $VOICETRACK_S3_UPLOAD_GRANT, None when unset. Raises
        InvalidInputError when it is not a grant."""
        text = os.environ.get(GRANT_ENV)
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValueError as err:
            raise InvalidInputError(f"{GRANT_ENV} is not an upload grant: {err}") from err


def renewal_margin(issued: datetime, expires: datetime) -> timedelta:
    """How long before `expires` a grant signed at `issued` is renewed (aware datetimes):
    `RENEWAL_MARGIN`, or a third of its lifetime when that is smaller (a 60 s grant is
    renewed 20 s before its end, a 1 h grant 10 min before)."""
    return min(RENEWAL_MARGIN, max(expires - issued, timedelta(0)) / 3)


def renews_at(grant: UploadGrant, share: float = 1.0) -> datetime:
    """When `grant` becomes due for renewal: `share` of its `renewal_margin` before its
    `expiresAt`. A grant without a readable `x-amz-date` (its lifetime unknown) is given
    the full `RENEWAL_MARGIN`. Pure."""
    try:
        margin = renewal_margin(grant.issued_at, grant.expires_at)
    except InvalidInputError:
        margin = RENEWAL_MARGIN
    return grant.expires_at - margin * share


def renewal_due(grant: UploadGrant, now: datetime, share: float = 1.0) -> bool:
    """True when `grant` has less than `share` of its `renewal_margin` left at `now` (aware
    datetime): the operator renews at `share` 1; the recorder reads the Secret at a smaller
    share, after the operator has renewed. Pure."""
    return now > renews_at(grant, share)


def grant_seconds(text: str | None) -> int | None:
    """$VOICETRACK_UPLOAD_GRANT_SECONDS parsed: None for unset, empty or 0 (the default
    lifetime), else the lifetime in seconds. Raises InvalidInputError naming the variable
    for a non-integer or a value under `MIN_GRANT_SECONDS`."""
    if not text or text.strip() == "0":
        return None
    try:
        seconds = int(text)
    except ValueError as err:
        raise InvalidInputError(f"{GRANT_SECONDS_ENV}={text!r} is not an integer") from err
    if seconds < MIN_GRANT_SECONDS:
        raise InvalidInputError(f"{GRANT_SECONDS_ENV}={seconds} is under the minimum "
                                f"{MIN_GRANT_SECONDS} s (0: the default lifetime)")
    return seconds


def mint_upload_grant(settings: S3Settings, bucket: str, prefix: str, expires: datetime,
                      max_bytes: int = MAX_OBJECT_BYTES) -> UploadGrant:
    """Sign a POST policy for objects under `prefix` (which must end with `/`) in
    `bucket`, valid until `expires` (aware datetime), each object at most `max_bytes`
    (bytes), signed with the credentials of `settings` (explicit keys, else the AWS chain).
    When those credentials are temporary, the grant expires with them if they expire
    first (`expiresAt` is the earlier of the two). No I/O with explicit keys; the chain
    may fetch credentials (once per process, again shortly before they expire). Raises
    InvalidInputError for an empty or unterminated prefix, CredentialsUnavailable when
    there are no credentials."""
    if not prefix.endswith("/") or prefix == "/":
        raise InvalidInputError(f"upload grant prefix {prefix!r} must be a folder ending "
                                "with '/'")
    url = urlparse(settings.endpoint)
    provider = credentials_provider(settings)
    creds = provider.retrieve()
    if creds.expiration is not None:  # naive UTC (minio's Credentials)
        expires = min(expires, creds.expiration.replace(tzinfo=UTC))
    signer = Minio(url.netloc, credentials=StaticProvider(
        creds.access_key, creds.secret_key, creds.session_token),
        secure=url.scheme == "https", region=settings.region)
    policy = PostPolicy(bucket, expires)
    policy.add_starts_with_condition("key", prefix)
    policy.add_starts_with_condition("Content-Type", "")
    policy.add_content_length_range_condition(0, min(max_bytes, MAX_OBJECT_BYTES))
    fields = {k: str(v) for k, v in signer.presigned_post_policy(policy).items()}
    return UploadGrant.model_validate({"bucket": bucket, "prefix": prefix,
                                       "expiresAt": expires, "fields": fields})


_HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=120), retries=False)


def post_object(endpoint: str, grant: UploadGrant, key: str, path: str,
                content_type: str = "application/octet-stream") -> None:
    """Upload the file at `path` as `key` with a POST under `grant` (S3 API reference,
    "POST Object": a multipart/form-data body of the policy fields, `key`,
    `Content-Type`, then `file`). Raises TemporaryFailure when S3 is unreachable or
    answers 5xx, 408 or 429; GrantRefused (an InvalidInputError) with S3's status, code and
    message for a refusal (an expired or tampered policy, a key outside its conditions:
    403); InvalidInputError for a key outside the grant's prefix (not sent)."""
    if not key.startswith(grant.prefix):
        raise InvalidInputError(f"key {key!r} is outside the upload grant's prefix "
                                f"{grant.prefix!r}")
    with open(path, "rb") as f:
        data = f.read()
    fields: dict[str, str | tuple[str, bytes, str]] = {
        **grant.fields, "key": key, "Content-Type": content_type,
        "file": (os.path.basename(path), data, content_type)}
    try:
        res = _HTTP.request("POST", f"{endpoint.rstrip('/')}/{grant.bucket}", fields=fields)
    except urllib3.exceptions.HTTPError as err:
        raise TemporaryFailure(f"storage: POST {key}: {err}") from err
    if res.status < 300:
        return
    body = res.data.decode(errors="replace")
    code = _xml_tag(body, "Code") or str(res.status)
    message = _xml_tag(body, "Message") or body[:200]
    if res.status >= 500 or res.status in (408, 429):
        raise TemporaryFailure(f"storage: POST {key}: {code}: {message}")
    raise GrantRefused(f"storage: POST {key}: {code}: {message}", res.status, code)


def _xml_tag(body: str, tag: str) -> str | None:
    start = body.find(f"<{tag}>")
    end = body.find(f"</{tag}>")
    if start < 0 or end < start:
        return None
    return body[start + len(tag) + 2:end]
