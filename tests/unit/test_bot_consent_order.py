"""`/record optout` changes the live session before the remembered list (review finding):
a ConfigMap the bot cannot write (its configmaps RBAC missing after an upgrade, damaged
data, the list full) used to raise before the session was patched, so the member kept
being recorded on the call in progress."""

from __future__ import annotations

from typing import Any

import pytest

from voicetrack.errors import TemporaryFailure
from voicetrack_recorder.bot.consent import BotConsent

pytestmark = pytest.mark.unit

GUILD, USER = "100000000000000001", "100000000000000009"


@pytest.mark.parametrize("opt_out", [True, False])
async def test_the_live_session_is_changed_even_when_the_configmap_cannot_be(
        opt_out: bool) -> None:
    consent = BotConsent.__new__(BotConsent)
    calls: list[str] = []

    async def patch_session(guild_id: str, user_id: str, out: bool
                            ) -> tuple[dict[str, Any] | None, bool]:
        calls.append(f"session {user_id} {'out' if out else 'in'}")
        return {"metadata": {"name": f"g-{guild_id}"}}, True

    async def remember(guild_id: str, user_id: str, out: bool) -> bool:
        calls.append("configmap")
        raise TemporaryFailure("configmaps is forbidden")

    consent._patch_session = patch_session  # type: ignore[method-assign]
    consent._remember = remember  # type: ignore[method-assign]
    change = consent.opt_out if opt_out else consent.opt_in
    with pytest.raises(TemporaryFailure, match="forbidden"):
        await change(GUILD, USER)
    assert calls == [f"session {USER} {'out' if opt_out else 'in'}", "configmap"]
