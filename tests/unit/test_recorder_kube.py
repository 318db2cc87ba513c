"""The recorder's view of its session.

The Kubernetes adapter when the API server cannot be reached: every call raises
TemporaryFailure (which the uploader retries), never the client's own urllib3
MaxRetryError (which used to escape the uploader's retry loop and end the recorder on a
brief API outage). The API server is a loopback port nothing listens on. And the meeting
id, the project's one derivation."""

from __future__ import annotations

import socket

import pytest
import urllib3
from kubernetes import client

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import TemporaryFailure
from voicetrack.names import derive_meeting_id
from voicetrack.resources import GROUP, SESSION_PLURAL, VERSION
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.main import meeting_id_of

pytestmark = pytest.mark.unit

GUILD = "300000000000000001"


def closed_port_api() -> client.ApiClient:
    """An API client with the client's default retries (so urllib3 ends in MaxRetryError)
    for a loopback port that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))


def chunk_spec() -> ChunkSpec:
    return ChunkSpec.model_validate({
        "sessionName": "standup", "meetingId": "abcdef0123456789", "guildId": GUILD,
        "index": 0, "startMs": 0, "endMs": 10_000, "rawFormat": "ogg-opus", "tracks": []})


def test_the_bare_client_raises_max_retry_error() -> None:
    """The fault the adapter must translate: what the client itself raises."""
    api = client.CustomObjectsApi(closed_port_api())
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        api.get_namespaced_custom_object(GROUP, VERSION, "rec", SESSION_PLURAL, "standup")


@pytest.mark.parametrize("call", ["get_session", "list_chunks", "create_chunk"])
def test_an_unreachable_api_server_is_a_temporary_failure(call: str) -> None:
    kube = RecorderKube(closed_port_api(), "rec", "standup")
    args = (chunk_spec(), "uid-1") if call == "create_chunk" else ()
    with pytest.raises(TemporaryFailure, match="API server unreachable") as caught:
        getattr(kube, call)(*args)
    assert isinstance(caught.value.__cause__, urllib3.exceptions.MaxRetryError)


def test_the_meeting_id_is_the_projects_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without VOICETRACK_MEETING_ID and before the operator wrote a status, the recorder
    derives the id the operator derives (it used to give up: "no meetingId yet")."""
    monkeypatch.delenv("VOICETRACK_MEETING_ID", raising=False)
    obj = {"metadata": {"name": "standup", "uid": "0f1e2d3c-uid"},
           "spec": {"guildId": GUILD, "channelId": GUILD}}
    assert meeting_id_of(obj) == derive_meeting_id("0f1e2d3c-uid")
    obj["spec"]["meetingId"] = "abcdef0123456789"
    assert meeting_id_of(obj) == "abcdef0123456789"
    monkeypatch.setenv("VOICETRACK_MEETING_ID", "0123456789abcdef")  # the operator's word
    assert meeting_id_of(obj) == "0123456789abcdef"
