"""`kubectl get recsess -o wide` shows why a session's opt-outs by role are not enforced.

Real kube-apiserver v1.36 with the CRDs of `voicetrack/crds/` (`install_crds`); no
operator runs: the test writes the status the operator would (`status.consent_degraded`
builds the ConsentDegraded condition). Before the CONSENT column, a degraded session was
visible only in `kubectl describe` or the YAML.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.cluster import Kubectl
from voicetrack.resources import API_VERSION, SESSION_KIND
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

HEADER = ["NAME", "STATE", "CHUNKS", "DONE", "FAILED", "DURATION", "AGE", "GUILD", "CHANNEL",
          "MEETING", "CONSENT"]


def _session(kubectl: Kubectl, ns: str, name: str, conditions: list[dict[str, str]]) -> None:
    doc = {"apiVersion": API_VERSION, "kind": SESSION_KIND,
           "metadata": {"name": name, "namespace": ns},
           "spec": {"guildId": "123456789012345678", "channelId": "223456789012345678",
                    "paused": True}}
    kubectl("create", "-f", "-", input=json.dumps(doc))
    status = {"status": {"state": "Recording", "meetingId": "AbCdEfGhIjKlMnOp",
                         "conditions": conditions}}
    kubectl("-n", ns, "patch", "recsess", name, "--subresource=status", "--type=merge",
            "-p", json.dumps(status))


def test_the_wide_table_names_the_degraded_consent(cluster: LocalCluster, kubectl: Kubectl,
                                                    namespace: str) -> None:
    install_crds(cluster.kubeconfig)
    since = "2026-12-04T06:00:00Z"
    _session(kubectl, namespace, "degraded", [
        {"type": "Ready", "status": "True", "reason": "Recording", "message": "",
         "lastTransitionTime": since},
        {"type": "ConsentDegraded", "status": "True", "reason": "MembersIntentRefused",
         "message": "Discord refused the Server Members Intent", "lastTransitionTime": since}])
    _session(kubectl, namespace, "normal", [
        {"type": "Ready", "status": "True", "reason": "Recording", "message": "",
         "lastTransitionTime": since}])
    table = kubectl("-n", namespace, "get", "recsess", "-o", "wide").stdout.splitlines()
    assert table[0].split() == HEADER
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["degraded"][-1] == "MembersIntentRefused"
    assert rows["normal"][-1] == "AbCdEfGhIjKlMnOp"  # nothing after the meeting
    narrow = kubectl("-n", namespace, "get", "recsess").stdout.splitlines()[0].split()
    assert "CONSENT" not in narrow  # priority 1: only with -o wide
