"""Which sessions get pieces while they record (`voicetrack.resources.pieced`): MP3, FLAC,
or both; nothing with Opus (issue 13: a FLAC-only session is assembled after stop and has
the audio so far, as an MP3 one)."""

from __future__ import annotations

import pytest

from voicetrack.resources import SessionSpec, pieced

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("formats", [["mp3"], ["flac"], ["mp3", "flac"], ["flac", "mp3"]])
def test_mp3_flac_or_both_get_pieces(formats: list[str]) -> None:
    assert pieced(formats)
    assert pieced(iter(formats))  # any iterable, read once


@pytest.mark.parametrize("formats", [["opus"], ["mp3", "opus"], ["flac", "opus"],
                                     ["mp3", "flac", "opus"], []])
def test_opus_or_nothing_gets_none(formats: list[str]) -> None:
    assert not pieced(formats)


def test_a_flac_only_spec_is_pieced() -> None:
    """What the operator asks of a session's spec (`services.live`: live Jobs)."""
    spec = SessionSpec.model_validate({
        "guildId": "123456789012345678", "channelId": "223456789012345678",
        "output": {"formats": ["flac"]}})
    assert pieced(spec.output.formats)
