"""The recorder's failure vocabulary: permanent storage errors, ack ranges, termination
message path and its fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from minio.error import S3Error

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.termination import write_termination_message
from voicetrack_recorder.faults import (
    index_ranges,
    permanent_cause,
)

pytestmark = pytest.mark.unit


def s3_error(code: str) -> S3Error:
    return S3Error(None, code, f"{code} message", "/b", "req", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["AccessDenied", "NoSuchBucket", "InvalidAccessKeyId",
                                  "SignatureDoesNotMatch"])
def test_a_refused_bucket_or_key_is_permanent_whatever_the_store_mapped(code: str) -> None:
    wrapped = TemporaryFailure("put k: ...")
    wrapped.__cause__ = s3_error(code)
    found = permanent_cause(wrapped)
    assert isinstance(found, InvalidInputError) and code in str(found)


def test_an_outage_is_not_permanent() -> None:
    wrapped = TemporaryFailure("put k: ...")
    wrapped.__cause__ = s3_error("SlowDown")
    assert permanent_cause(wrapped) is None
    assert permanent_cause(TemporaryFailure("connection refused")) is None
    bad_name = TemporaryFailure("bucket")
    bad_name.__cause__ = ValueError("invalid bucket name A_B")
    assert isinstance(permanent_cause(bad_name), InvalidInputError)


def test_index_ranges() -> None:
    assert index_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert index_ranges([]) == "-"


def test_termination_message_honours_the_override_and_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "term"
    monkeypatch.setenv("VOICETRACK_TERMINATION_LOG", str(target))
    assert write_termination_message("invalid input:\n  token refused") == str(target)
    assert target.read_text() == "invalid input: token refused"
    monkeypatch.setenv("VOICETRACK_TERMINATION_LOG", str(tmp_path / "no" / "such" / "dir"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert write_termination_message("x" * 5000) == str(tmp_path / "termination-log")
    assert len((tmp_path / "termination-log").read_bytes()) == 4096


def test_a_spec_the_recorder_cannot_read_is_an_input_error_naming_the_field() -> None:
    """(Before: pydantic's ValidationError ended the recorder with exit code 1, a restart
    loop, instead of 2 with the field.)"""
    from voicetrack_recorder.main import _parse_spec

    with pytest.raises(InvalidInputError, match=r"^spec\.storage\.bucket: "):
        _parse_spec({"spec": {"guildId": "300000000000000001",
                              "channelId": "300000000000000002", "storage": {"bucket": "ab"}}})


async def test_retry_async_retries_outages_until_success_and_gives_up_at_stop() -> None:
    import asyncio

    from voicetrack_recorder.faults import retry_async

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TemporaryFailure("API server unreachable")
        return "ok"

    assert await retry_async(flaky, "flaky") == "ok" and calls == 3

    async def down() -> str:
        raise TemporaryFailure("API server unreachable")

    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    with pytest.raises(TemporaryFailure):
        await asyncio.wait_for(retry_async(down, "down", stop), 5)

    async def refused() -> str:
        err = TemporaryFailure("put: S3 operation failed")
        raise err from s3_error("AccessDenied")

    with pytest.raises(InvalidInputError, match="AccessDenied"):
        await retry_async(refused, "refused")
