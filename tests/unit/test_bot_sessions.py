"""BotSessions without a cluster: names, input checks made before any API call, and the
translation of the client's errors (real `ApiException`s and a refused connection).
The calls against the API server are in tests/e2e/test_bot_sessions.py."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.unit.test_bot_app import unreachable_api
from voicetrack.errors import (
    ApiAccessDenied,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TemporaryFailure,
)
from voicetrack_recorder.bot.sessions import BotSessions
from voicetrack_recorder.bot.sessionspec import session_name

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
    (404, NotFoundError), (400, InvalidInputError), (403, ApiAccessDenied),
    (409, ConflictError), (422, InvalidInputError), (429, TemporaryFailure),
    (500, TemporaryFailure), (503, TemporaryFailure),
])
async def test_api_errors_take_the_projects_one_mapping(status: int,
                                                        kind: type[Exception]) -> None:
    """What a client call raises reaches the commands as `voicetrack.kubeclient.
    translate_api_error` maps it (409 a ConflictError: the create's "already exists" path
    needs nothing else), with the API server's own message."""
    def refused(**_: object) -> dict:
        raise api_error(status, "Reason", "the server's words")

    sessions = BotSessions(unreachable_api(), "rec")
    with pytest.raises(kind) as caught:
        await sessions._call("do it", refused)
    assert type(caught.value) is kind and str(caught.value) == "do it: the server's words"


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
    with pytest.raises(TemporaryFailure, match="API server unreachable"):
        await getattr(sessions, method)(GUILD)
    with pytest.raises(TemporaryFailure):
        await sessions.start(GUILD, CHANNEL, USER)


async def test_follow_keeps_trying_through_an_unreachable_api_until_its_timeout() -> None:
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    obj = {"metadata": {"name": f"g-{GUILD}", "uid": "u-1"},
           "status": {"state": "Promoting"}}
    seen: list[object] = []

    async def on_change(o: dict[str, object]) -> None:
        seen.append(o)

    assert await sessions.follow(obj, 0.5, on_change, poll_s=0.1) == obj
    assert seen == []  # nothing was read, so nothing changed
