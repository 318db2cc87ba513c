"""S3 credentials without a server (issue 15): the settings' keys are optional together, the
AWS chain's temporary credentials (here from an ECS-style container credentials endpoint
on loopback, a real HTTP server that minio's `IamAwsProvider` asks) sign presigned URLs and
upload grants with their session token, and a grant never outlives them. The same end to
end, with SeaweedFS's own STS: tests/integration/test_s3_credentials.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.integration.test_s3_credentials import AWS_VARS
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.s3credentials import (
    EXPLICIT_KEYS,
    credentials_provider,
    credentials_source,
    forget_credentials,
)
from voicetrack.uploadgrant import mint_upload_grant

pytestmark = pytest.mark.unit

ENDPOINT = "http://127.0.0.1:9"  # never contacted: presigning and minting are local
TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken"


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    forget_credentials()
    yield
    forget_credentials()


@pytest.fixture
def container_credentials(no_aws: None, monkeypatch: pytest.MonkeyPatch
                          ) -> Iterator[datetime]:
    """An ECS container credentials endpoint on loopback handing out temporary credentials
    that expire in 20 minutes (returned); AWS_CONTAINER_CREDENTIALS_FULL_URI points at it."""
    expires = (datetime.now(UTC) + timedelta(minutes=20)).replace(microsecond=0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"AccessKeyId": "ASIATEMPORARY", "SecretAccessKey": "temp-secret",
                               "Token": TOKEN,
                               "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                       f"http://127.0.0.1:{server.server_port}/creds")
    try:
        yield expires
    finally:
        server.shutdown()
        server.server_close()


def test_keys_are_optional_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICETRACK_S3_ENDPOINT", ENDPOINT)
    for name in ("VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    chain = S3Settings.from_env()
    assert (chain.access_key, chain.secret_key, chain.has_keys) == ("", "", False)
    assert "VOICETRACK_S3_ACCESS_KEY" not in chain.env()
    assert "VOICETRACK_S3_SECRET_KEY" not in chain.env()
    monkeypatch.setenv("VOICETRACK_S3_ACCESS_KEY", "AK")
    with pytest.raises(RuntimeError, match="VOICETRACK_S3_SECRET_KEY is not"):
        S3Settings.from_env()
    monkeypatch.setenv("VOICETRACK_S3_SECRET_KEY", "SK")
    keys = S3Settings.from_env()
    assert keys.has_keys and keys.env()["VOICETRACK_S3_SECRET_KEY"] == "SK"
    monkeypatch.delenv("VOICETRACK_S3_ENDPOINT")
    with pytest.raises(RuntimeError, match="VOICETRACK_S3_ENDPOINT"):
        S3Settings.from_env()


def test_explicit_keys_are_named_as_the_source(no_aws: None) -> None:
    assert credentials_source(S3Settings(ENDPOINT, "AK", "SK")) == EXPLICIT_KEYS


def test_presigned_urls_carry_the_session_token(no_aws: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    url = ObjectStore(S3Settings(ENDPOINT)).presigned_get("a/b.mp3", 60)
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Security-Token"] == [TOKEN]
    assert query["X-Amz-Credential"][0].startswith("ASIAENV/")


def test_a_grant_from_temporary_credentials_carries_the_token_and_ends_with_them(
        container_credentials: datetime) -> None:
    settings = S3Settings(ENDPOINT)
    assert credentials_source(settings).startswith("IAM (")
    grant = mint_upload_grant(settings, "voicetrack", "rec/1/AAAA/chunks/",
                              datetime.now(UTC) + timedelta(hours=3))
    assert grant.expires_at == container_credentials  # capped at the credentials' expiry
    assert grant.fields["x-amz-security-token"] == TOKEN
    assert grant.fields["x-amz-credential"].startswith("ASIATEMPORARY/")
    policy = json.loads(base64.b64decode(grant.fields["policy"]))
    assert ["eq", "$x-amz-security-token", TOKEN] in policy["conditions"]
    assert policy["expiration"].startswith(
        container_credentials.strftime("%Y-%m-%dT%H:%M:%S"))
    # a grant asked to end sooner keeps its own expiry
    soon = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    assert mint_upload_grant(settings, "voicetrack", "rec/1/AAAA/chunks/",
                             soon).expires_at == soon


def test_one_provider_per_keys_whatever_the_bucket(no_aws: None) -> None:
    a, b = S3Settings(ENDPOINT, bucket="one"), S3Settings("http://127.0.0.1:8", bucket="two")
    assert credentials_provider(a) is credentials_provider(b)  # one chain, fetched once
    assert credentials_provider(S3Settings(ENDPOINT, "AK", "SK")) is not credentials_provider(a)
    fresh = credentials_provider(a)
    forget_credentials()
    assert credentials_provider(a) is not fresh
