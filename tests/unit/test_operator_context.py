"""The operator context's per-bucket object stores keep every S3 setting."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlparse

import pytest

from voicetrack.objectstore import S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings

pytestmark = pytest.mark.unit


def test_a_bucket_store_signs_links_for_the_public_endpoint() -> None:
    s3 = S3Settings(endpoint="http://voicetrack-s3:8333", access_key="k", secret_key="s",
                    public_endpoint="https://s3.example.com")
    ctx = Context(settings=OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3,
                                            pods=PodSettings()),
                  kube=cast(Any, None), db=cast(Any, None))
    store = ctx.store("other-bucket").sync
    assert store.bucket == "other-bucket"
    url = urlparse(store.presigned_get("final/mix.mp3", 60))
    assert url.netloc == "s3.example.com" and url.path == "/other-bucket/final/mix.mp3"


def test_the_s3_region_reaches_the_operator_and_every_pod_it_builds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"VOICETRACK_S3_ENDPOINT": "http://s3:8333",
                        "VOICETRACK_S3_ACCESS_KEY": "k", "VOICETRACK_S3_SECRET_KEY": "s",
                        "VOICETRACK_S3_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings.from_env()
    assert settings.s3.region == "eu-west-3" and settings.pods.s3_region == "eu-west-3"
    assert S3Settings.from_env().env()["VOICETRACK_S3_REGION"] == "eu-west-3"
    monkeypatch.delenv("VOICETRACK_S3_REGION")
    assert S3Settings.from_env().region == "us-east-1"


def test_the_allowed_buckets_are_the_operators_own_and_s3_buckets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """VOICETRACK_S3_BUCKETS adds to the operator's own bucket, which is always allowed."""
    monkeypatch.setenv("VOICETRACK_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("VOICETRACK_S3_BUCKET", "mine")
    monkeypatch.delenv("VOICETRACK_S3_BUCKETS", raising=False)
    assert OperatorSettings.from_env().allowed_buckets == {"mine"}
    monkeypatch.setenv("VOICETRACK_S3_BUCKETS", " team-a, ,team-b ")
    assert OperatorSettings.from_env().allowed_buckets == {"mine", "team-a", "team-b"}
