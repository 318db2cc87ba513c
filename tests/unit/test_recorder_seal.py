"""When the recorder may seal a window: the seal delay behind the clock, never past the
source's watermark unless the source is stuck."""

from __future__ import annotations

import pytest

from voicetrack_recorder.recorder import (
    MAX_SOURCE_LAG_SLOTS,
    SEAL_DELAY_SLOTS,
    sealable_slot,
    source_watermark,
)

pytestmark = pytest.mark.unit


def test_the_clock_rules_when_the_source_is_on_time_or_silent() -> None:
    assert sealable_slot(1000, None) == 1000 - SEAL_DELAY_SLOTS
    assert sealable_slot(1000, 1000) == 1000 - SEAL_DELAY_SLOTS


def test_a_late_source_holds_sealing_back_until_it_is_stuck() -> None:
    assert sealable_slot(1000, 950) == 950
    stuck = 1000 - SEAL_DELAY_SLOTS - MAX_SOURCE_LAG_SLOTS - 1
    assert sealable_slot(1000, stuck) == 1000 - SEAL_DELAY_SLOTS


def test_a_source_without_a_watermark_has_none() -> None:
    class Plain:
        async def run(self) -> None: ...

    class Marked:
        def watermark_slot(self) -> int:
            return 7

    assert source_watermark(Plain()) is None
    assert source_watermark(Marked()) == 7
