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
