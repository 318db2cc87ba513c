"""S3 credentials: a settings' explicit keys, else the standard AWS chain through minio's
providers (environment, shared credentials file and profile, IAM: IRSA web identity, ECS
container credentials, EC2 instance metadata). One provider per key pair and process signs
every request, presigned URL and upload grant (`voicetrack.objectstore`,
`voicetrack.uploadgrant`), with the session token of temporary credentials. No credentials
at all → CredentialsUnavailable (a TemporaryFailure naming each source tried).
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING

import urllib3
from minio.credentials import (
    AWSConfigProvider,
    ChainedProvider,
    Credentials,
    EnvAWSProvider,
    IamAwsProvider,
    Provider,
    StaticProvider,
)

from voicetrack.errors import ServiceUnavailable

if TYPE_CHECKING:  # objectstore imports this module
    from voicetrack.objectstore import S3Settings

EXPLICIT_KEYS = "VOICETRACK_S3_ACCESS_KEY/VOICETRACK_S3_SECRET_KEY"
"""The credential source named for explicit keys."""

IMDS_DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
"""Set to `true` to skip the EC2 instance metadata service (as the AWS SDKs do) when no web
identity or container credentials are configured either."""


class CredentialsUnavailable(ServiceUnavailable):
    """No S3 credentials: no explicit keys and nothing in the AWS chain. The message names
    every source tried and why it gave nothing (an admin fixes it; callers retry)."""


class _Link(Provider):
    """One source of the chain: runs minio's `provider`, names it (`label`), and remembers
    why it last failed. Network and file errors become ValueError, which is how minio's
    ChainedProvider moves on to the next source."""

    def __init__(self, label: str, provider: Provider) -> None:
        self.label = label
        self.provider = provider
        self.error: str | None = None

    def retrieve(self) -> Credentials:
        try:
            creds = self.provider.retrieve()
        except ValueError as err:
            self.error = str(err)
            raise
        except (urllib3.exceptions.HTTPError, OSError, KeyError, json.JSONDecodeError) as err:
            self.error = f"{type(err).__name__}: {err}"
            raise ValueError(self.error) from err
        self.error = None
        return creds


class CredentialChain(ChainedProvider):
    """The standard AWS credential chain, through minio's providers: AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (`EnvAWSProvider`), the shared credentials
    file AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials with AWS_PROFILE
    (`AWSConfigProvider`), then `IamAwsProvider`: IRSA web identity
    (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), ECS container credentials, EC2 instance
    metadata (skipped when AWS_EC2_METADATA_DISABLED=true and neither of the others is
    configured). minio caches what it got and fetches again shortly before temporary
    credentials expire. `source` names the link that answered last; when none does,
    `retrieve` raises CredentialsUnavailable naming each one and why."""

    def __init__(self) -> None:
        links = [_Link("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", EnvAWSProvider())]
        filename = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
        profile = os.environ.get("AWS_PROFILE") or "default"
        links.append(_Link(f"shared credentials file {filename} profile {profile}",
                           AWSConfigProvider()))
        iam = IamAwsProvider(http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1, read=5),
            retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504])))
        configured = any(os.environ.get(n) for n in (
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        if configured or os.environ.get(IMDS_DISABLED_ENV, "").lower() != "true":
            links.append(_Link("IAM (web identity / ECS / EC2 instance metadata)", iam))
            self.skipped = ""
        else:
            self.skipped = f"; EC2 instance metadata: skipped ({IMDS_DISABLED_ENV}=true)"
        super().__init__(list(links))
        self.links = links

    @property
    def source(self) -> str | None:
        """The label of the source that answered last (None before the first answer)."""
        return next((link.label for link in self.links
                     if link is self._provider), None)

    def retrieve(self) -> Credentials:
        try:
            return super().retrieve()
        except ValueError:
            tried = "; ".join(f"{link.label}: {link.error}" for link in self.links)
            raise CredentialsUnavailable(
                f"no S3 credentials: {EXPLICIT_KEYS} are unset and the AWS credential "
                f"chain found none (tried {tried}{self.skipped})") from None


class ExplicitKeys(StaticProvider):
    """The keys given in the settings (they win over the chain); `source` names them."""

    source = EXPLICIT_KEYS


def credentials_provider(settings: S3Settings) -> ExplicitKeys | CredentialChain:
    """The one credentials provider for `settings`' keys in this process, shared by every
    client and signer (whatever their bucket or endpoint), so temporary credentials are
    fetched once and refreshed shortly before they expire: its explicit keys, else the AWS
    chain (`CredentialChain`). No I/O: the chain looks only when asked (`retrieve`)."""
    return _provider(settings.access_key, settings.secret_key)


@functools.lru_cache(maxsize=32)
def _provider(access_key: str, secret_key: str) -> ExplicitKeys | CredentialChain:
    if access_key and secret_key:
        return ExplicitKeys(access_key, secret_key)
    return CredentialChain()


def forget_credentials() -> None:
    """Drop every provider (and the credentials it holds): the next client looks again
    (tests that change the environment between stores)."""
    _provider.cache_clear()


def credentials_source(settings: S3Settings) -> str:
    """Which source gives `settings`' credentials now (it retrieves them: may do I/O).
    Raises CredentialsUnavailable."""
    provider = credentials_provider(settings)
    provider.retrieve()
    return provider.source or "unknown"
