"""The API server refuses an edit of what fixes a session's meeting (CRD transition rules),
naming the field and why, and still takes an edit of what a user changes mid-session.

Before the rules, `kubectl edit` of `spec.meetingId` (or the guild, the storage, the
output) of a recording session was admitted: the operator then refused every chunk as not
the session's, left the old meeting recording for ever and collected its audio as orphans
(review fault, HIGH). Real kube-apiserver v1.36 with the CRDs of `voicetrack/crds/`
(`install_crds`); no operator runs: this is the API server's own validation.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from voicetrack.resources import API_VERSION, SESSION_KIND
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

GUILD, CHANNEL, OTHER = "123456789012345678", "223456789012345678", "323456789012345678"
MEETING = "AbCdEfGhIjKlMnOp"
SPEAKER = {"userId": CHANNEL, "objectKey": "demo/a.ogg"}
SPEC: dict[str, Any] = {
    "guildId": GUILD, "channelId": CHANNEL, "meetingId": MEETING, "paused": True,
    "storage": {"bucket": "vt-bucket", "prefix": "rec"},
    "output": {"formats": ["mp3"]},
    "source": {"type": "files", "speakers": [SPEAKER]}}

IMMUTABLE: list[tuple[str, list[dict[str, Any]], str]] = [
    ("meetingId changed", [{"op": "replace", "path": "/spec/meetingId",
                            "value": "ZyXwVuTsRqPoNmLk"}], "spec.meetingId"),
    ("meetingId removed", [{"op": "remove", "path": "/spec/meetingId"}], "spec.meetingId"),
    ("guildId", [{"op": "replace", "path": "/spec/guildId", "value": OTHER}],
     "spec.guildId"),
    ("channelId", [{"op": "replace", "path": "/spec/channelId", "value": OTHER}],
     "spec.channelId"),
    ("storage.bucket", [{"op": "replace", "path": "/spec/storage/bucket",
                         "value": "other-bucket"}], "spec.storage"),
    ("storage.prefix", [{"op": "replace", "path": "/spec/storage/prefix",
                         "value": "elsewhere"}], "spec.storage"),
    ("storage.rawFormat", [{"op": "replace", "path": "/spec/storage/rawFormat",
                            "value": "pcm-s16le"}], "spec.storage"),
    ("storage removed", [{"op": "remove", "path": "/spec/storage"}], "spec.storage"),
    ("output.formats", [{"op": "replace", "path": "/spec/output/formats",
                         "value": ["flac"]}], "spec.output"),
    ("output.tracks", [{"op": "replace", "path": "/spec/output/tracks",
                        "value": "mixed"}], "spec.output"),
    ("source.speakers", [{"op": "add", "path": "/spec/source/speakers/-",
                          "value": {"userId": OTHER, "objectKey": "demo/b.ogg"}}],
     "spec.source"),
    ("source.type", [{"op": "replace", "path": "/spec/source",
                      "value": {"type": "discord"}}], "spec.source"),
]

MUTABLE: list[tuple[str, dict[str, Any]]] = [
    ("paused", {"paused": False}),
    ("optOutUserIds", {"optOutUserIds": [OTHER]}),
    ("optOutRoleIds", {"optOutRoleIds": [OTHER]}),
    ("limits", {"limits": {"maxDurationSeconds": 600, "emptyChannelSeconds": 0}}),
    ("transcodeTimeoutSeconds", {"transcodeTimeoutSeconds": 900}),
    ("retainTempRows", {"retainTempRows": True}),
    ("chunkSeconds", {"chunkSeconds": 30}),
    ("notify", {"notify": {"webhook": {"url": "https://hooks.example.com/vt",
                                       "secretRef": {"name": "hook", "key": "k"}}}}),
]


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster, kubectl: Kubectl) -> Iterator[str]:
    """The CRDs installed, and one namespace for this module's sessions."""
    install_crds(cluster.kubeconfig)
    name = f"t-immutable-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _create(kubectl: Kubectl, ns: str, spec: dict[str, Any]) -> str:
    """Create a session with `spec` and a status like a recording one's; its name."""
    name = f"s-{secrets.token_hex(4)}"
    kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": API_VERSION, "kind": SESSION_KIND,
        "metadata": {"name": name, "namespace": ns}, "spec": spec}))
    kubectl("-n", ns, "patch", "recsess", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"state": "Recording", "meetingId": MEETING}}))
    return name


def _spec(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    obj = json.loads(kubectl("-n", ns, "get", "recsess", name, "-o", "json").stdout)
    return dict(obj["spec"])


@pytest.mark.parametrize(("what", "patch", "field"), IMMUTABLE, ids=[c[0] for c in IMMUTABLE])
def test_an_edit_of_the_meeting_is_refused_naming_the_field(
        kubectl: Kubectl, ns: str, what: str, patch: list[dict[str, Any]], field: str
) -> None:
    name = _create(kubectl, ns, SPEC)
    before = _spec(kubectl, ns, name)
    proc = kubectl("-n", ns, "patch", "recsess", name, "--type=json", "-p", json.dumps(patch),
                   check=False)
    assert proc.returncode != 0, f"{what}: the edit was admitted"
    assert f"{field} is immutable" in proc.stderr, proc.stderr
    assert _spec(kubectl, ns, name) == before


def test_a_meeting_id_cannot_be_added_later(kubectl: Kubectl, ns: str) -> None:
    """A session without spec.meetingId has one derived from its uid: adding one would
    move it to another meeting just the same."""
    spec = {k: v for k, v in SPEC.items() if k != "meetingId"}
    name = _create(kubectl, ns, spec)
    proc = kubectl("-n", ns, "patch", "recsess", name, "--type=merge",
                   "-p", json.dumps({"spec": {"meetingId": MEETING}}), check=False)
    assert proc.returncode != 0 and "spec.meetingId is immutable" in proc.stderr, proc.stderr
    assert "meetingId" not in _spec(kubectl, ns, name)


def test_what_a_user_changes_mid_session_still_patches(kubectl: Kubectl, ns: str) -> None:
    name = _create(kubectl, ns, SPEC)
    for what, change in MUTABLE:
        proc = kubectl("-n", ns, "patch", "recsess", name, "--type=merge",
                       "-p", json.dumps({"spec": change}), check=False)
        assert proc.returncode == 0, f"{what}: {proc.stderr}"
        got = _spec(kubectl, ns, name)
        for key, value in change.items():
            if isinstance(value, dict):
                assert {k: got[key][k] for k in value} == value, what
            else:
                assert got[key] == value, what
    # the same values again (a client that writes the whole spec back) is no edit either
    proc = kubectl("-n", ns, "replace", "-f", "-", check=False, input=json.dumps({
        "apiVersion": API_VERSION, "kind": SESSION_KIND,
        "metadata": {"name": name, "namespace": ns}, "spec": _spec(kubectl, ns, name)}))
    assert proc.returncode == 0, proc.stderr
