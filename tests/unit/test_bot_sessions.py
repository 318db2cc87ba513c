"""BotSessions without a cluster: names, input checks made before any API call, and the
translation of the client's errors (real `ApiException`s and a refused connection).
The calls against the API server are in tests/e2e/test_bot_sessions.py."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.unit.test_bot_app import unreachable_api
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack_recorder.bot.sessions import BotSessions, api_message, session_name, translate

pytestmark = pytest.mark.unit

GUILD = "300000000000000001"
CHANNEL = "300000000000000002"
USER = "400000000000000009"


def api_error(status: int, reason: str, message: str | None) -> ApiException:
    err = ApiException(status=status, reason=reason)
    if message is not None:  # the API server's Status object (metav1.Status)
        err.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": message, "code": status})
    return err


def test_session_name_is_derived_from_the_guild() -> None:
    assert session_name(GUILD) == f"g-{GUILD}"
    assert len(session_name("9" * 20)) == 22
    with pytest.raises(InvalidInputError, match="guild_id"):
        session_name("my-guild")


@pytest.mark.parametrize("status, kind", [
    (404, NotFoundError), (400, InvalidInputError), (403, InvalidInputError),
    (409, InvalidInputError), (422, InvalidInputError), (429, TemporaryFailure),
    (500, TemporaryFailure), (503, TemporaryFailure),
])
def test_translate_maps_status_codes(status: int, kind: type[Exception]) -> None:
    err = translate(api_error(status, "Reason", "the server's words"), "do it")
    assert type(err) is kind and str(err) == "do it: the server's words"


def test_translate_keeps_the_api_message_and_falls_back_to_the_reason() -> None:
    msg = ('RecordingSession.voicetrack.dev "g-1" is invalid: spec.chunkSeconds: Invalid '
           'value: 3: spec.chunkSeconds in body should be greater than or equal to 5')
    assert api_message(api_error(422, "Unprocessable Entity", msg)) == msg
    assert api_message(api_error(502, "Bad Gateway", None)) == "502 Bad Gateway"
    err = ApiException(status=500, reason="Internal")
    err.body = "<html>not json</html>"
    assert api_message(err) == "500 Internal"


@pytest.mark.parametrize("defaults, match", [
    ({"chunkSeconds": 2}, "chunkSeconds"),
    ({"source": {"type": "files"}}, "source"),
    ({"colour": "red"}, "colour"),
    ({"guildId": GUILD}, "guildId"),
])
def test_bad_spec_defaults_are_refused_naming_the_field(defaults: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        BotSessions(unreachable_api(), "rec", spec_defaults=defaults)


def test_a_namespace_is_required() -> None:
    with pytest.raises(InvalidInputError, match="namespace"):
        BotSessions(unreachable_api(), "")


@pytest.mark.parametrize("args, match", [
    (("1", CHANNEL, USER), "guild_id"),
    ((GUILD, "general", USER), "channel_id"),
    ((GUILD, CHANNEL, "alice"), "requested_by"),
    ((GUILD, CHANNEL, USER, 301), "chunkSeconds"),
])
async def test_start_checks_its_input_before_any_call(args: tuple, match: str) -> None:
    sessions = BotSessions(unreachable_api(), "rec")
    with pytest.raises(InvalidInputError, match=match):
        await sessions.start(*args)


@pytest.mark.parametrize("method", ["status", "stop", "pause", "resume"])
async def test_an_unreachable_api_is_a_temporary_failure(method: str) -> None:
    sessions = BotSessions(unreachable_api(), "rec")
    with pytest.raises(TemporaryFailure, match="Kubernetes API unreachable"):
        await getattr(sessions, method)(GUILD)
    with pytest.raises(TemporaryFailure):
        await sessions.start(GUILD, CHANNEL, USER)
