"""The transcoder's exit codes, as its Jobs and the operator read them
(`voicetrack.termination`): bad input 2 (the Job fails at once), S3 away 75 (made again,
never counted against the chunk), anything else 1 (counted, up to the operator's limit).
An ffmpeg crash is a TemporaryFailure but may be the input's doing: exit 1, so a chunk
that crashes ffmpeg every time ends failed instead of being transcoded for ever."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.s3credentials import CredentialsUnavailable
from voicetrack.s3errors import translate_s3_error
from voicetrack.termination import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_TEMPORARY
from voicetrack_transcoder.main import _guarded

pytestmark = pytest.mark.unit


def code_of(err: BaseException) -> int:
    def work() -> None:
        raise err
    with pytest.raises(typer.Exit) as got:
        _guarded(work)
    return int(got.value.exit_code)


@pytest.mark.parametrize(("make", "code"), [
    (lambda: InvalidInputError("raw track: sha256 mismatch"), EXIT_BAD_INPUT),
    (lambda: translate_s3_error(ConnectionRefusedError("refused"), "get k"), EXIT_TEMPORARY),
    (lambda: CredentialsUnavailable("no credentials"), EXIT_TEMPORARY),
    (lambda: TemporaryFailure("ffmpeg (decode) exited 1: Assertion failed"), EXIT_FAILURE),
    (lambda: RuntimeError("a bug"), EXIT_FAILURE),
])
def test_each_failure_exits_with_its_code(make: Callable[[], BaseException],
                                          code: int) -> None:
    assert code_of(make()) == code
