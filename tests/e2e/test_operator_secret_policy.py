"""The chart's operator writes upload grant Secrets and no other Secret (issue 15 review:
`update` on all Secrets narrowed), on the local API server with the rendered chart's
ClusterRole and binding (manifests/voicetrack.yaml) and the admission policies the local
stack installs with the CRDs (voicetrack/policies/, the same files the chart includes).
Requests are made as the chart's ServiceAccount (`kubectl --as`): it may create and
replace a session's grant Secret, and is refused creating any other Secret or rewriting
one that exists (the S3 keys), which its RBAC alone would allow.

Before the policy, the last two were admitted."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
import yaml

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_helm import MANIFESTS
from tests.e2e.test_operator_services import make_session
from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec
from voicetrack_operator.builders import (
    PodSettings,
    build_recorder_pod,
    build_upload_grant_secret,
    recorder_service_account,
)
from voicetrack_operator.context import Context
from voicetrack_operator.jobs import build_transcode_job
from voicetrack_operator.services.sessions import SessionService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx

OPERATOR = "system:serviceaccount:voicetrack:voicetrack"
"""The chart's ServiceAccount in the namespace manifests/ is rendered for."""


@pytest.fixture
def chart_rbac(kubectl: Kubectl) -> Any:
    objs = [o for o in yaml.safe_load_all(MANIFESTS.read_text())
            if o and o["kind"] in ("ClusterRole", "ClusterRoleBinding")
            and o["metadata"]["name"] == "voicetrack"]
    assert len(objs) == 2
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))
    deadline = time.monotonic() + 30  # the authorizer follows RBAC by watch: not at once
    while kubectl("auth", "can-i", "create", "secrets", "--as", OPERATOR,
                  check=False).stdout.strip() != "yes":
        assert time.monotonic() < deadline, "the chart's ClusterRole never took effect"
        time.sleep(0.2)
    yield
    for o in objs:
        kubectl("delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found",
                check=False)


def as_operator(kubectl: Kubectl, verb: str, doc: dict[str, Any], *args: str) -> Any:
    return kubectl("--as", OPERATOR, verb, *args, "-f", "-", input=json.dumps(doc),
                   check=False)


async def test_the_operator_writes_grant_secrets_only(
        ctx: Context, namespace: str, kubectl: Kubectl, chart_rbac: None) -> None:
    s = await make_session(ctx, kubectl, namespace, "policy")
    await SessionService(ctx).ensure_session(s)
    name = recorder_service_account(s.ref)
    grant = json.loads(kubectl("-n", namespace, "get", "secret", name, "-o", "json").stdout)

    # its own work: replace the grant (a renewal), create one (after a deletion)
    renewed = build_upload_grant_secret(s.ref, '{"renewed": true}')
    res = as_operator(kubectl, "replace", renewed)
    assert res.returncode == 0, res.stderr
    kubectl("-n", namespace, "delete", "secret", name)
    res = as_operator(kubectl, "create", build_upload_grant_secret(s.ref, "{}"))
    assert res.returncode == 0, res.stderr

    # anything else: refused by the policy (RBAC admits it)
    keys = {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "voicetrack-s3", "namespace": namespace},
            "stringData": {"accessKey": "a", "secretKey": "b"}}
    kubectl("apply", "-f", "-", input=json.dumps(keys))
    for verb, doc in [
            ("create", {**keys, "metadata": {"name": "other", "namespace": namespace}}),
            ("replace", {**keys, "stringData": {"accessKey": "stolen", "secretKey": "x"}}),
            # a grant Secret's shape with a name that is not its session's
            ("create", {**renewed, "metadata": {**renewed["metadata"],
                                                "name": "voicetrack-recorder.x.policy"}}),
            # the grant's name without its owner
            ("create", {**renewed, "metadata": {"name": name + "-2", "namespace": namespace,
                                                "labels": grant["metadata"]["labels"]}})]:
        res = as_operator(kubectl, verb, doc)
        assert res.returncode != 0, (verb, doc["metadata"]["name"])
        assert "may write upload grant Secrets only" in res.stderr, res.stderr
    stored = json.loads(kubectl("-n", namespace, "get", "secret", "voicetrack-s3", "-o",
                                "json").stdout)
    assert stored["data"]["accessKey"] == "YQ=="  # untouched
    can = kubectl("auth", "can-i", "update", "secrets", "-n", namespace, "--as", OPERATOR,
                  check=False).stdout.strip()
    assert can == "yes"  # RBAC would have let it: the policy is what narrows it


async def test_the_operator_starts_recorder_and_transcoder_pods_only(
        ctx: Context, namespace: str, kubectl: Kubectl, chart_rbac: None) -> None:
    """Third review (chart, RBAC), fault 7: the chart's ClusterRole lets the operator
    create Pods and Jobs in every namespace; without operator-workloads-policy.yaml a
    compromised operator could start a privileged, host-mounting pod under any
    ServiceAccount. Server-side dry runs: admission runs, nothing is started."""
    s = await make_session(ctx, kubectl, namespace, "pods")
    await SessionService(ctx).ensure_session(s)  # its ServiceAccounts (and its recorder)
    settings = PodSettings()
    recorder = build_recorder_pod(s.ref, s.spec, s.meeting_id, 0, settings)
    recorder["metadata"]["name"] += "-again"  # the session's own is there already
    chunk = ChunkSpec.model_validate(services_tests.chunk_doc(s, 0, 0, 5000)["spec"])
    job = build_transcode_job(s.ref, chunk, s.spec, settings)
    for doc in (recorder, job):  # what the builders make: admitted
        res = as_operator(kubectl, "create", doc, "--dry-run=server")
        assert res.returncode == 0, res.stderr

    def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
        return doc["spec"]["template"]["spec"] if doc["kind"] == "Job" else doc["spec"]

    def altered(doc: dict[str, Any], change: Any) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        change(pod_spec(out))
        return out

    cases = [
        (lambda p: p.update(serviceAccountName="default"), "recorder or the transcoder"),
        (lambda p: p.pop("serviceAccountName"), "recorder or the transcoder"),
        (lambda p: p.update(hostNetwork=True), "host's network"),
        (lambda p: p.update(volumes=[*p.get("volumes", []), {
            "name": "root", "hostPath": {"path": "/"}}]), "host's network"),
        (lambda p: p["securityContext"].update(runAsNonRoot=False), "non-root"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True,
                                                                 allowPrivilegeEscalation=True),
         "non-root"),
        (lambda p: p["containers"][0]["securityContext"].update(capabilities={
            "add": ["SYS_ADMIN"]}), "added capabilities"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "non-root"),
        # review of the day's change: a root container was admitted this way
        (lambda p: (p["securityContext"].update(runAsUser=0),
                    p["containers"][0]["securityContext"].update(runAsNonRoot=False)),
         "non-root"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False),
         "non-root"),
        (lambda p: p["containers"][0]["securityContext"].pop("capabilities"), "non-root"),
    ]
    for doc in (recorder, job):
        for change, says in cases:
            res = as_operator(kubectl, "create", altered(doc, change), "--dry-run=server")
            assert res.returncode != 0 and says in res.stderr, (doc["kind"], says,
                                                                 res.stderr)
    can = kubectl("auth", "can-i", "create", "pods", "-n", "kube-system", "--as", OPERATOR,
                  check=False).stdout.strip()
    assert can == "yes"  # RBAC would have let it: the policy is what narrows it
