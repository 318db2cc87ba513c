"""A deletion does not wait for ever for pods on a dead node (review fault 3), on the local
API server and SeaweedFS, the services called directly: a Node object with no kubelet
behind it (never Ready, tainted so nothing else is scheduled there) holds the session's
recorder pod and a Running transcoder pod. No kubelet confirms their graceful deletion,
so they stayed (Terminating, Running) and the stop step and the collect step waited for
them for ever. Now the recorder pod is force-deleted, its upload grant revoked and an
Event asked for; the transcoder pod is force-deleted and the chunks collected."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import make_session, set_status
from tests.e2e.test_upload_grant_secret import secret_state
from tests.fixtures.cluster import Kubectl
from voicetrack.names import owner_reference, recorder_pod_name
from voicetrack.resources import LABEL_COMPONENT, LABEL_SESSION
from voicetrack_operator.builders import (
    build_recorder_pod,
    build_session_recorder_rbac,
    recorder_service_account,
)
from voicetrack_operator.context import Context
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionStep
from voicetrack_operator.services.grants import ensure_upload_grant
from voicetrack_operator.services.inventory import collect_chunks
from voicetrack_operator.services.sessions import SessionService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx


@pytest.fixture
def dead_node(kubectl: Kubectl) -> Iterator[str]:
    """A Node no kubelet runs: it never reports Ready."""
    name = f"vt-dead-{secrets.token_hex(3)}"
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"taints": [{"key": "voicetrack.dev/test-dead", "effect": "NoSchedule"}]}}))
    yield name
    kubectl("delete", "node", name, "--wait=false", check=False)


async def test_the_stop_step_force_deletes_a_recorder_on_a_dead_node(
        ctx: Context, namespace: str, kubectl: Kubectl, dead_node: str) -> None:
    s = await make_session(ctx, kubectl, namespace, "stranded", paused=False)
    for manifest in build_session_recorder_rbac(s.ref):  # the account the pod runs as
        await ctx.kube.ensure(manifest)
    pod = build_recorder_pod(s.ref, s.spec, s.meeting_id, 0, ctx.settings.pods)
    pod["spec"]["nodeName"] = dead_node  # bound there, as the scheduler would have
    await ctx.kube.ensure(pod)
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id, datetime.now(UTC))

    out = await DeletionService(ctx).finalize_session(s)
    assert out.progress.step is not DeletionStep.STOP, out.message  # not waiting for it
    assert await ctx.kube.get_pod(namespace, recorder_pod_name(s.ref.name)) is None
    (reason, message), = out.notices
    assert reason == "RecorderForceDeleted" and f"node {dead_node} is NotReady" in message
    assert "grant revoked" in message
    _, grant = secret_state(kubectl, namespace, recorder_service_account(s.ref))
    assert grant.expires_at <= datetime.now(UTC)  # a recorder reading it again gets none


async def test_collecting_force_deletes_a_transcoder_running_on_a_dead_node(
        ctx: Context, namespace: str, kubectl: Kubectl, dead_node: str) -> None:
    s = await make_session(ctx, kubectl, namespace, "stranded-tx")
    # a transcoder pod Running there, controlled by a Job
    tx = f"{s.ref.name}-tx-000000-x"
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": tx, "namespace": namespace,
                     "labels": {LABEL_SESSION: s.ref.name, LABEL_COMPONENT: "transcoder"},
                     "ownerReferences": [owner_reference(
                         f"{s.ref.name}-tx-000000", "00000000-0000-4000-8000-0000000000aa",
                         kind="Job", api_version="batch/v1")]},
        "spec": {"nodeName": dead_node, "containers": [{"name": "t", "image": "none"}]}}))
    kubectl("-n", namespace, "patch", "pod", tx, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running"}}))

    await collect_chunks(ctx, s)  # raised "waiting for transcoder pod(s)" for ever before
    assert await ctx.kube.get_pod(namespace, tx) is None
