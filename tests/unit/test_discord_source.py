"""DiscordSource's input checks (the Discord connection itself needs Discord)."""

from __future__ import annotations

import pytest

from tests.discord_rig import CaptureSink
from voicetrack.errors import InvalidInputError
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord import DiscordSource

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kwargs, field", [
    ({"token": ""}, "token"),
    ({"guild_id": "my-guild"}, "guild_id"),
    ({"channel_id": "-5"}, "channel_id"),
])
def test_refuses_bad_input_naming_the_field(kwargs: dict, field: str) -> None:
    args = {"token": "t", "guild_id": "1" * 18, "channel_id": "2" * 18} | kwargs
    with pytest.raises(InvalidInputError, match=field):
        DiscordSource(clock=SessionClock(0), sink=CaptureSink(), **args)


def test_stats_before_run_are_zero() -> None:
    source = DiscordSource(token="t", guild_id="1" * 18, channel_id=2 * 10**17,
                           clock=SessionClock(0), sink=CaptureSink())
    assert source.stats.frames == 0 and source.stats.as_dict()["dropped"] == {}
    assert source.channel_id == 2 * 10**17 and source.guild_id == int("1" * 18)
