"""Where Discord is: the recorder's `DiscordEndpoint` settings and the operator passing
them to recorder pods (`VOICETRACK_POD_DISCORD_*` → the pod's `VOICETRACK_DISCORD_*`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord
import pytest
import yarl

from voicetrack.errors import InvalidInputError
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import PodSettings, SessionRef, build_recorder_pod
from voicetrack_operator.context import OperatorSettings
from voicetrack_recorder.discord.endpoint import (
    DISCORD_API_BASE,
    DISCORD_GATEWAY_URL,
    DiscordEndpoint,
)

pytestmark = pytest.mark.unit

OWNER = SessionRef(name="standup", namespace="team", uid="0b6c-uid")
SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})
LOCAL = {"VOICETRACK_POD_DISCORD_API_BASE": "https://127.0.0.1:4443/api/v10",
         "VOICETRACK_POD_DISCORD_GATEWAY_URL": "wss://127.0.0.1:4443/gateway",
         "VOICETRACK_POD_DISCORD_CA_BUNDLE": "/state/pki/ca.crt"}
S3 = {"VOICETRACK_S3_ENDPOINT": "http://127.0.0.1:8333", "VOICETRACK_S3_ACCESS_KEY": "a",
      "VOICETRACK_S3_SECRET_KEY": "b"}


def test_defaults_are_discord_itself_and_match_discord_py() -> None:
    endpoint = DiscordEndpoint.from_env({})
    assert endpoint == DiscordEndpoint(DISCORD_API_BASE, DISCORD_GATEWAY_URL, None)
    assert discord.http.Route.BASE == DISCORD_API_BASE
    assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == DISCORD_GATEWAY_URL


def test_apply_points_discord_py_and_connector_trusts_the_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", DISCORD_API_BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(DISCORD_GATEWAY_URL))
    import certifi  # any real PEM bundle will do

    bundle = tmp_path / "ca.crt"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    endpoint = DiscordEndpoint.from_env({
        "VOICETRACK_DISCORD_API_BASE": "https://127.0.0.1:4443/api/v10/",
        "VOICETRACK_DISCORD_GATEWAY_URL": "wss://127.0.0.1:4443/gateway",
        "VOICETRACK_DISCORD_CA_BUNDLE": str(bundle)})
    endpoint.apply()
    assert discord.http.Route("GET", "/users/@me").url == \
        "https://127.0.0.1:4443/api/v10/users/@me"
    assert yarl.URL("wss://127.0.0.1:4443/gateway") == \
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY

    async def make() -> None:
        conn = endpoint.connector()
        assert conn is not None and conn._ssl is not False
        await conn.close()
        assert DiscordEndpoint().connector() is None

    asyncio.run(make())


@pytest.mark.parametrize(("name", "value"), [
    ("VOICETRACK_DISCORD_API_BASE", "ftp://x/api"),
    ("VOICETRACK_DISCORD_GATEWAY_URL", "https://x/gateway"),
    ("VOICETRACK_DISCORD_CA_BUNDLE", "/nonexistent/ca.crt"),
])
def test_bad_settings_are_named(name: str, value: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        DiscordEndpoint.from_env({name: value})


def test_operator_passes_discord_settings_to_recorder_pods(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**LOCAL, **S3}.items():
        monkeypatch.setenv(key, value)
    pods = OperatorSettings.from_env().pods
    pod = build_recorder_pod(OWNER, SPEC, "m" * 16, 1_700_000_000_000, pods)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["VOICETRACK_DISCORD_API_BASE"] == "https://127.0.0.1:4443/api/v10"
    assert env["VOICETRACK_DISCORD_GATEWAY_URL"] == "wss://127.0.0.1:4443/gateway"
    assert env["VOICETRACK_DISCORD_CA_BUNDLE"] == "/state/pki/ca.crt"


def test_unset_discord_settings_add_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in LOCAL:
        monkeypatch.delenv(key, raising=False)
    for key, value in S3.items():
        monkeypatch.setenv(key, value)
    pods = OperatorSettings.from_env().pods
    for settings in (pods, PodSettings()):
        pod = build_recorder_pod(OWNER, SPEC, "m" * 16, 1, settings)
        names = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert not {n for n in names if n.startswith("VOICETRACK_DISCORD_")} - {
            "VOICETRACK_DISCORD_TOKEN"}
    files = SessionSpec.model_validate({**SPEC.model_dump(by_alias=True), "source": {
        "type": "files", "speakers": [{"userId": "1" * 18, "objectKey": "k"}]}})
    pod = build_recorder_pod(OWNER, files, "m" * 16, 1, PodSettings(
        discord_api_base="https://x/api/v10"))
    assert not [e for e in pod["spec"]["containers"][0]["env"]
                if e["name"].startswith("VOICETRACK_DISCORD_")]


def test_the_bot_command_refuses_a_bad_discord_setting() -> None:
    from typer.testing import CliRunner

    from voicetrack_recorder.main import app

    result = CliRunner().invoke(app, ["bot"], env={
        "VOICETRACK_DISCORD_TOKEN": "t", "VOICETRACK_NAMESPACE": "rec",
        "KUBECONFIG": "/nonexistent/kubeconfig",
        "VOICETRACK_DISCORD_CA_BUNDLE": "/nonexistent/ca.crt"})
    assert result.exit_code == 2, result.output
    assert "VOICETRACK_DISCORD_CA_BUNDLE: '/nonexistent/ca.crt' is not a file" in result.output
