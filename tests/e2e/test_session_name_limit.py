"""RecordingSession names are at most 50 characters (`SESSION_NAME_MAX`), so every child
name is `<session>-<suffix>` within 63, and the recorder chunk admission policy checks a
chunk's name exactly (no hashed-name branch that only checked the `-chunk-NNNNNN` suffix).

Real kube-apiserver v1.36 with the CRDs and the policy of `voicetrack/` (`install_crds`);
no operator runs: the recorder's ServiceAccount, Role and RoleBinding are the operator's
own (`build_session_recorder_rbac`), applied by the admin. Before the limit, a 55-character
session was admitted, and its recorder could create `victim-chunk-000042` (the victim's
own create then met a 409).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError
from voicetrack.kubeclient import load_api_client
from voicetrack.names import chunk_name, owner_reference
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    CHUNK_PLURAL,
    GROUP,
    LABEL_SESSION,
    SESSION_KIND,
    SESSION_NAME_MAX,
    VERSION,
    check_session_name,
)
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_operator.builders import (
    SessionRef,
    build_session_recorder_rbac,
    recorder_service_account,
)
from voicetrack_recorder.kube import RecorderKube

pytestmark = pytest.mark.e2e

GUILD, MEETING = "123456789012345678", "AbCdEfGhIjKlMnOp"
SESSION_CRD = "recordingsessions.voicetrack.dev"
TOO_LONG = "metadata.name: Too long: may not be more than 50"
NAME_RULE = "must be named <spec.sessionName>-chunk-<index:06d>"


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    install_crds(cluster.kubeconfig)


def wait_until(what: str, fn: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll `fn` until it is True (a changed CRD, RBAC and policies take a moment)."""
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.3)


def session_doc(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": SESSION_KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"guildId": GUILD, "channelId": "223456789012345678", "paused": True}}


def create_session(kubectl: Kubectl, ns: str, name: str) -> tuple[bool, str]:
    proc = kubectl("create", "-f", "-", input=json.dumps(session_doc(ns, name)), check=False)
    return proc.returncode == 0, proc.stderr


def session_ref(kubectl: Kubectl, ns: str, name: str) -> SessionRef:
    obj = json.loads(kubectl("-n", ns, "get", "recordingsession", name, "-o", "json").stdout)
    return SessionRef(name=name, namespace=ns, uid=obj["metadata"]["uid"])


@contextmanager
def names_up_to_63(cluster: LocalCluster, kubectl: Kubectl, ns: str) -> Iterator[None]:
    """The RecordingSession CRD as it was before the limit (maxLength 63) for the block,
    then the CRD of `voicetrack/crds/` again: what an upgraded cluster holds."""
    probe = f"{'p' * 51}-{secrets.token_hex(2)}"[:55]
    kubectl("patch", "crd", SESSION_CRD, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/"
         "metadata/properties/name/maxLength", "value": 63}]))
    try:
        yield
    finally:
        install_crds(cluster.kubeconfig)

        def limited() -> bool:
            admitted, _ = create_session(kubectl, ns, probe)
            if admitted:
                kubectl("-n", ns, "delete", "recordingsession", probe, "--wait=false")
            return not admitted

        wait_until("the 50-character limit back in effect", limited)


def legacy_session(cluster: LocalCluster, kubectl: Kubectl, ns: str, name: str) -> SessionRef:
    """A session named over 50 characters, created before the limit (an upgraded cluster)."""
    with names_up_to_63(cluster, kubectl, ns):
        wait_until("the CRD without the limit in effect",
                   lambda: create_session(kubectl, ns, name)[0])
    return session_ref(kubectl, ns, name)


def kubeconfig_with_token(cluster: LocalCluster, tmp_path: Path, token: str) -> str:
    """The admin kubeconfig with a bearer token instead of the admin's credentials."""
    doc = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    doc["users"][0]["user"] = {"token": token}
    path = tmp_path / f"kubeconfig-{secrets.token_hex(3)}"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def recorder_api(cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path,
                 owner: SessionRef) -> client.ApiClient:
    """The session's recorder identity as the operator makes it, and a client with a
    short-lived token of it, once its Role is in effect."""
    for doc in build_session_recorder_rbac(owner):
        kubectl("apply", "-f", "-", input=json.dumps(doc))
    sa = recorder_service_account(owner)
    token = kubectl("-n", owner.namespace, "create", "token", sa,
                    "--duration=10m").stdout.strip()
    api = load_api_client(kubeconfig_with_token(cluster, tmp_path, token))
    kube = RecorderKube(api, owner.namespace, owner.name)
    wait_until("the recorder's Role in effect", lambda: _ok(kube.get_session))
    return api


def _ok(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except Exception:  # any refusal means "not yet"
        return False
    return True


def policy_in_effect(api: client.ApiClient, owner: SessionRef) -> None:
    """Wait until the chunk policy refuses the recorder a chunk of a foreign label (refused
    with and without the limit), each try under a new name."""
    wait_until("the chunk policy in effect", lambda: create_chunk_as(
        api, owner, f"probe-{secrets.token_hex(4)}", 1, label="x")[0] == 422)


def chunk_spec(session: str, index: int) -> ChunkSpec:
    return ChunkSpec(session_name=session, meeting_id=MEETING, guild_id=GUILD, index=index,
                     start_ms=index * 10_000, end_ms=index * 10_000 + 10_000)


def create_chunk_as(api: client.ApiClient, owner: SessionRef, name: str, index: int,
                    label: str | None = None) -> tuple[int, str]:
    """Create chunk `index` of `owner` under `name` as the client's user: (HTTP status,
    message); the ownerReference, label (default: the owner's) and spec are the owner's."""
    body = {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
            "metadata": {"name": name, "labels": {LABEL_SESSION: label or owner.name},
                         "ownerReferences": [owner_reference(owner.name, owner.uid)]},
            "spec": chunk_spec(owner.name, index).to_api()}
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, owner.namespace, CHUNK_PLURAL, body)
    except client.ApiException as err:
        return int(err.status), str(json.loads(err.body or "{}").get("message"))
    return 201, ""


def test_a_session_name_over_50_characters_is_refused_naming_the_field(
        crds: None, kubectl: Kubectl, namespace: str) -> None:
    assert SESSION_NAME_MAX == 50
    for length in (51, 55, 63):
        admitted, err = create_session(kubectl, namespace, "s" * length)
        assert not admitted and TOO_LONG in err, err
        with pytest.raises(ValueError, match=r"metadata\.name must be at most 50"):
            check_session_name("s" * length)
    assert create_session(kubectl, namespace, "s" * 50) == (True, "")
    assert check_session_name("s" * 50) == "s" * 50


def test_a_session_named_long_before_the_limit_is_still_updated_and_deleted(
        crds: None, cluster: LocalCluster, kubectl: Kubectl, namespace: str) -> None:
    """The limit does not wedge a stored session (CRD validation ratcheting: its name is
    unchanged): its finalizer, spec and status are written and it is deleted."""
    name = "legacy-" + "l" * 48
    legacy_session(cluster, kubectl, namespace, name)
    assert not create_session(kubectl, namespace, name + "x")[0]  # the limit holds again
    obj = ["-n", namespace, "recordingsession", name]
    kubectl("patch", *obj, "--type=merge", "-p",
            json.dumps({"metadata": {"finalizers": ["voicetrack.dev/promote"]}}))
    kubectl("patch", *obj, "--type=merge", "-p", json.dumps({"spec": {"paused": False}}))
    kubectl("patch", *obj, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"state": "Stopping"}}))
    kubectl("delete", *obj, "--wait=false")
    kubectl("patch", *obj, "--type=json", "-p",
            json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))
    wait_until("the session gone", lambda: kubectl(
        "get", *obj, check=False).returncode != 0)


def test_a_long_named_sessions_recorder_cannot_take_another_sessions_chunk_name(
        crds: None, cluster: LocalCluster, kubectl: Kubectl, namespace: str,
        tmp_path: Path) -> None:
    """The attack of the hashed-name branch: a recorder of a session named over 50
    characters (possible before the limit) created `victim-chunk-000042`, owned by and
    labelled with its own session; the policy checked the suffix only. Admitted before."""
    attacker = legacy_session(cluster, kubectl, namespace, "atk-" + "a" * 51)
    assert create_session(kubectl, namespace, "victim") == (True, "")
    api = recorder_api(cluster, kubectl, tmp_path, attacker)
    policy_in_effect(api, attacker)
    status, message = create_chunk_as(api, attacker, chunk_name("victim", 42), 42)
    assert (status, NAME_RULE in message) == (422, True), (status, message)
    # its own (hashed) name is no longer admitted either: no name of it can be checked
    status, message = create_chunk_as(api, attacker, chunk_name(attacker.name, 42), 42)
    assert (status, NAME_RULE in message) == (422, True), (status, message)


def test_a_recorder_of_the_longest_session_name_writes_its_own_chunks_only(
        crds: None, cluster: LocalCluster, kubectl: Kubectl, namespace: str,
        tmp_path: Path) -> None:
    """At the boundary (50 characters) the recorder's own chunk name is 63 characters,
    unhashed, and admitted; another session's chunk name is refused by the exact check."""
    longest = "own-" + "o" * (SESSION_NAME_MAX - 4)
    for name in (longest, "victim"):
        assert create_session(kubectl, namespace, name) == (True, "")
    own = session_ref(kubectl, namespace, longest)
    api = recorder_api(cluster, kubectl, tmp_path, own)
    kube = RecorderKube(api, namespace, longest)
    policy_in_effect(api, own)
    kube.create_chunk(chunk_spec(longest, 0), own.uid)
    assert len(chunk_name(longest, 0)) == 63 and chunk_name(longest, 0).startswith(longest)
    kubectl("-n", namespace, "get", "recchunk", chunk_name(longest, 0))
    status, message = create_chunk_as(api, own, chunk_name("victim", 42), 42)
    assert (status, NAME_RULE in message) == (422, True), (status, message)
    with pytest.raises(InvalidInputError, match="own session only"):
        RecorderKube(api, namespace, "victim").create_chunk(chunk_spec("victim", 43), own.uid)
