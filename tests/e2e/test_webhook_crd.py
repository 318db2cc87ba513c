"""The API server refuses a bad `spec.notify.webhook` naming the field, and admits a good
one (real kube-apiserver with the CRDs from `voicetrack/crds/`; no operator runs). Each
refused spec is refused by the operator's model too."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from voicetrack.resources import API_VERSION, SESSION_KIND, SessionSpec
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

GOOD = {"url": "https://hooks.example.com/voicetrack?team=a",
        "secretRef": {"name": "voicetrack-webhook", "key": "hmac"}}


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster, kubectl: Kubectl) -> Iterator[str]:
    install_crds(cluster.kubeconfig)
    name = f"t-webhook-crd-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def create(kubectl: Kubectl, ns: str, webhook: Any) -> tuple[bool, str, dict[str, Any]]:
    """`kubectl create` a session with `webhook`; (admitted, stderr, spec). Admitted
    objects are deleted again."""
    name = f"w-{secrets.token_hex(4)}"
    spec = {"guildId": "123456789012345678", "channelId": "223456789012345678",
            "notify": {"webhook": webhook}}
    obj = {"apiVersion": API_VERSION, "kind": SESSION_KIND,
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    proc = kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
    if proc.returncode == 0:
        kubectl("-n", ns, "delete", "recsess", name, "--wait=false", check=False)
    return proc.returncode == 0, proc.stderr, spec


def test_a_good_webhook_is_admitted(kubectl: Kubectl, ns: str) -> None:
    admitted, err, spec = create(kubectl, ns, GOOD)
    assert admitted, err
    SessionSpec.model_validate(spec)


@pytest.mark.parametrize(("webhook", "field"), [
    ({**GOOD, "url": "ftp://hooks.example.com/x"}, "spec.notify.webhook.url"),
    ({**GOOD, "url": "hooks.example.com/x"}, "spec.notify.webhook.url"),
    ({**GOOD, "url": "https://user:pass@hooks.example.com/"}, "spec.notify.webhook.url"),
    ({**GOOD, "url": "https://hooks.example.com/a b"}, "spec.notify.webhook.url"),
    ({**GOOD, "url": "http://:8080/x"}, "spec.notify.webhook.url"),
    ({**GOOD, "url": "https://h.example/" + "p" * 2040}, "spec.notify.webhook.url"),
    ({"secretRef": GOOD["secretRef"]}, "spec.notify.webhook.url"),
    ({"url": GOOD["url"]}, "spec.notify.webhook.secretRef"),
    ({**GOOD, "secretRef": {"name": "Not_A_Name", "key": "hmac"}},
     "spec.notify.webhook.secretRef.name"),
    ({**GOOD, "secretRef": {"name": "ok", "key": "../k"}},
     "spec.notify.webhook.secretRef.key"),
])
def test_a_bad_webhook_is_refused_naming_the_field(kubectl: Kubectl, ns: str,
                                                   webhook: dict[str, Any], field: str) -> None:
    admitted, err, spec = create(kubectl, ns, webhook)
    assert not admitted and field in err, err
    with pytest.raises(ValueError):  # the operator's model refuses it too
        SessionSpec.model_validate(spec)


def test_the_charts_operator_may_get_a_secret_but_not_list_them(
        kubectl: Kubectl, ns: str) -> None:
    """The rendered chart (manifests/voicetrack.yaml) grants the operator `get` on Secrets,
    which the webhook's signing key needs, and still no `list` or `watch`."""
    import yaml

    from tests.e2e.test_helm import MANIFESTS

    sa = "system:serviceaccount:voicetrack:voicetrack"
    objs = [o for o in yaml.safe_load_all(MANIFESTS.read_text())
            if o and o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert len(objs) == 2
    try:
        kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))

        def can(verb: str) -> str:
            return str(kubectl("auth", "can-i", verb, "secrets", "-n", ns, "--as", sa,
                               check=False).stdout.strip())

        assert (can("get"), can("list"), can("watch")) == ("yes", "no", "no")
    finally:
        for o in objs:
            kubectl("delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found",
                    check=False)
