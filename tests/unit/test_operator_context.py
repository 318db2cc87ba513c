"""The operator context's per-bucket object stores keep every S3 setting; its settings
parse the bucket and NetworkPolicy namespace lists."""

from __future__ import annotations

import dataclasses
from typing import Any, cast
from urllib.parse import urlparse

import pytest

from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import POLICY_NAMESPACES_ENV, Context, OperatorSettings
from voicetrack_operator.services.admission import namespace_refusal

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


def test_the_policy_namespaces_are_parsed_and_a_bad_one_stops_start_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """VOICETRACK_POLICY_NAMESPACES (the chart's NetworkPolicy namespaces): unset or blank
    is no check; a list is a set of names; a value that is not a namespace name, or lists
    none, raises naming the variable (the operator does not start)."""
    monkeypatch.setenv("VOICETRACK_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv(POLICY_NAMESPACES_ENV, raising=False)
    assert OperatorSettings.from_env().policy_namespaces is None
    monkeypatch.setenv(POLICY_NAMESPACES_ENV, " ")
    assert OperatorSettings.from_env().policy_namespaces is None
    monkeypatch.setenv(POLICY_NAMESPACES_ENV, " voicetrack, ,team-a ")
    assert OperatorSettings.from_env().policy_namespaces == {"voicetrack", "team-a"}
    for bad in ("team-*", "Team", "a/b", ",", "x" * 64):
        monkeypatch.setenv(POLICY_NAMESPACES_ENV, bad)
        with pytest.raises(InvalidInputError, match=POLICY_NAMESPACES_ENV):
            OperatorSettings.from_env()


def test_a_namespace_without_network_policies_is_refused_only_when_they_are_listed() -> None:
    """`namespace_refusal`: no list (None) refuses nothing; with one, a namespace not on it
    is refused with a reason naming metadata.namespace, the namespace, the chart value
    and the variable; a listed one is not."""
    base = OperatorSettings(database_url="sqlite+aiosqlite://", s3=S3Settings(
        endpoint="http://127.0.0.1:9"), pods=PodSettings())
    assert namespace_refusal(base, "anywhere") is None
    listed = dataclasses.replace(base, policy_namespaces=frozenset({"voicetrack", "team-a"}))
    assert namespace_refusal(listed, "team-a") is None
    why = namespace_refusal(listed, "team-b")
    assert why is not None
    for part in ("metadata.namespace", "'team-b'", "networkPolicy.namespaces",
                 POLICY_NAMESPACES_ENV, "team-a, voicetrack", "unconfined"):
        assert part in why, (part, why)
