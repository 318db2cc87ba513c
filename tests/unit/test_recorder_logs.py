"""A DEBUG run of the recorder logs no Discord secret: discord.py's voice websocket (its
real `DiscordVoiceWebSocket`, driven by the rig's fake voice server) sends IDENTIFY and
RESUME with the voice token and receives op 4 with the transport key, with the recorder's
logging set up as its commands set it up (`configure_logging`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.discord_rig import Harness
from voicetrack_recorder.logs import SECRET_BEARING_LOGGERS, configure_logging

pytestmark = pytest.mark.unit

VOICE_TOKEN = "voice-token-7f3a9c1e5b"


@pytest.fixture
def debug_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The root at DEBUG, as VOICETRACK_LOG_LEVEL=DEBUG sets it; levels restored after."""
    caplog.set_level(logging.DEBUG)
    configure_logging("DEBUG")
    yield caplog
    for name in SECRET_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


async def test_a_debug_run_logs_no_token_or_key(
        debug_logging: pytest.LogCaptureFixture) -> None:
    h = await Harness.open()  # op 4 SESSION_DESCRIPTION (secret_key) was received
    h.state.token, h.state.session_id, h.state.server_id = VOICE_TOKEN, "sess-1", 1234
    await h.gateway.ws.identify()
    await h.gateway.ws.resume()
    await h.rig.join(222222222222222222)  # ops 27/29/30 and 5/11 through the websocket too
    await h.settle()
    await h.finish()
    sent = [m for m in h.gateway.server.json if m["op"] in (0, 7)]
    assert [m["d"]["token"] for m in sent] == [VOICE_TOKEN] * 2  # the secrets were there
    text = "\n".join(r.getMessage() for r in debug_logging.records)
    assert logging.getLogger("discord.client").isEnabledFor(logging.DEBUG)  # DEBUG is on
    assert logging.getLogger("discord.gateway").isEnabledFor(logging.INFO)
    assert VOICE_TOKEN not in text
    assert str(list(h.rig.secret_key)) not in text and "secret_key" not in text
