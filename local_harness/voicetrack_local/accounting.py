"""Who wrote what to the local API server: one client identity per actor of a scale run (the
operator, the load generator), each counted by its own FlowSchemas.

``apiserver_request_total`` has no user label, but API Priority and Fairness classifies each
request by user and verb before it runs, and counts it per FlowSchema
(``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}``).  So each actor gets a
client certificate of its own (CN = the actor, O = :data:`GROUP`, bound to ``cluster-admin``)
and two FlowSchemas on the ``exempt`` priority level (never queued, as the admin is):
``<actor>-writes`` (create, update, patch, delete, deletecollection) and ``<actor>-reads``.
The admin certificate is in ``system:masters``, which the ``exempt`` FlowSchema claims first,
so an actor must not use it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from voicetrack_local.kubeconfig import write_kubeconfig
from voicetrack_local.kubectl import kubectl
from voicetrack_local.pki import CertPair, _issue, _name, ensure_pki

GROUP = "voicetrack:bench"
"""Organisation of every actor's certificate; bound to ``cluster-admin``."""

WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
READ_VERBS = ["get", "list", "watch"]


def issue_identity(state_dir: Path, actor: str, server: str) -> Path:
    """A client certificate for user ``actor`` (group :data:`GROUP`), issued once by the
    cluster CA, and a kubeconfig using it (``state_dir/kubeconfigs/<actor>.kubeconfig``);
    returns the kubeconfig's path."""
    pki = ensure_pki(state_dir)
    pair = CertPair(pki.dir / f"{actor}.crt", pki.dir / f"{actor}.key")
    if not (pair.crt.exists() and pair.key.exists()):
        ca_cert = x509.load_pem_x509_certificate(pki.ca.crt.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        _issue(pair, _name(actor, GROUP), ca_cert, ca_key, client=True)
    return write_kubeconfig(state_dir / "kubeconfigs" / f"{actor}.kubeconfig", server,
                            pki.ca.crt, user=actor, cert=pair.crt, key=pair.key)


def flow_schema(actor: str, verbs: list[str], suffix: str, precedence: int) -> dict[str, Any]:
    """The FlowSchema ``<actor>-<suffix>``: requests of user ``actor`` with ``verbs`` on
    any resource, on the ``exempt`` priority level.  Pure."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": f"{actor}-{suffix}"},
        "spec": {
            "matchingPrecedence": precedence,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": actor}}],
                "resourceRules": [{"verbs": verbs, "apiGroups": ["*"], "resources": ["*"],
                                   "namespaces": ["*"], "clusterScope": True}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
                if suffix == "reads" else [],
            }],
        },
    }  # fmt: skip


def accounting_manifests(actors: list[str]) -> list[dict[str, Any]]:
    """The ClusterRoleBinding of :data:`GROUP` to ``cluster-admin`` and each actor's two
    FlowSchemas (writes at precedence 10, reads at 11: both before every upstream one but
    ``exempt`` and ``probes``).  Pure."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "voicetrack-bench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": GROUP, "apiGroup": "rbac.authorization.k8s.io"}],
    }  # fmt: skip
    schemas = [s for a in actors for s in (flow_schema(a, WRITE_VERBS, "writes", 10),
                                           flow_schema(a, READ_VERBS, "reads", 11))]
    return [binding, *schemas]


def apply_accounting(kubeconfig: Path, actors: list[str]) -> None:
    """Apply :func:`accounting_manifests` with the admin kubeconfig."""
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": accounting_manifests(actors)}))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition as (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def api_writes(text: str) -> dict[str, float]:
    """From the API server's ``/metrics``: writes dispatched per FlowSchema (key = schema
    name) and ``"total"``, every write request the server counted
    (``apiserver_request_total`` with verb POST, PUT, PATCH, DELETE, DELETECOLLECTION,
    APPLY)."""
    out: dict[str, float] = {"total": 0.0}
    for name, labels, value in parse_metrics(text):
        if name == "apiserver_flowcontrol_dispatched_requests_total":
            out[labels.get("flow_schema", "")] = out.get(labels.get("flow_schema", ""), 0.0) \
                + value
        elif name == "apiserver_request_total" and labels.get("verb") in (
                "POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"):
            out["total"] += value
    return out
