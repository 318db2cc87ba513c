"""The chart's bundled data services, rendered with `helm template`:

- PostgreSQL (`postgresql.enabled`): its password Secret survives `helm uninstall` (keep
  policy, like its data claim) and holds the read-only role's password too; the operator
  gets the app role's URL, the web page and the `helm test` pod only the read-only role's;
  the superuser's name is refused as either role;
- SeaweedFS (`seaweedfs.enabled`), whose filer answers without a key, is refused without
  `networkPolicy.enabled`.
The image side (roles, passwords set on every start) is
tests/integration/test_postgresql_entrypoint.py."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_helm import CHART, KUBE, Helm, docs, helm  # noqa: F401  (fixture)
from tests.e2e.test_helm_web import ON as WEB_ON
from tests.fixtures.cluster import Kubectl
from voicetrack_local.cluster import LocalCluster

pytestmark = pytest.mark.e2e

PG = ("--set", "postgresql.enabled=true")
_PAIRS = list(zip(WEB_ON[::2], WEB_ON[1::2], strict=True))
WEB = tuple(a for flag, value in _PAIRS if not value.startswith("database.url")
            for a in (flag, value))  # fmt: skip


def _render(helm: Helm, *args: str) -> list[dict[str, Any]]:  # noqa: F811
    return docs(helm("template", "v", str(CHART), *KUBE, *args).stdout)


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)}"
    return found[0]


def _database_ref(pod_spec: dict[str, Any]) -> dict[str, str]:
    for c in pod_spec["containers"]:
        for e in c.get("env") or []:
            if e["name"] == "VOICETRACK_DATABASE_URL":
                return dict(e["valueFrom"]["secretKeyRef"])
    raise AssertionError("no VOICETRACK_DATABASE_URL")


def _secret_url(objs: list[dict[str, Any]], ref: dict[str, str]) -> str:
    return str(_one(objs, "Secret", ref["name"])["stringData"][ref["key"]])


def test_the_password_secret_is_kept_and_readers_get_the_read_only_role(
        helm: Helm) -> None:  # noqa: F811
    objs = _render(helm, *PG, *WEB)
    secret = _one(objs, "Secret", "v-voicetrack-postgresql")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(passwords) == {"password", "readOnlyPassword"}
    assert passwords["password"] != passwords["readOnlyPassword"]

    env = {e["name"]: e for e in _one(objs, "StatefulSet", "v-voicetrack-postgresql")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_USER"]["value"] == "voicetrack"
    assert env["POSTGRES_READONLY_USER"]["value"] == "voicetrack_ro"
    assert env["POSTGRES_READONLY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "v-voicetrack-postgresql", "key": "readOnlyPassword"}

    operator = _one(objs, "Deployment", "v-voicetrack")["spec"]["template"]["spec"]
    web = _one(objs, "Deployment", "v-voicetrack-web")["spec"]["template"]["spec"]
    tests = [o for o in objs if o["kind"] == "Pod"
             and "helm.sh/hook" in (o["metadata"].get("annotations") or {})]  # fmt: skip
    assert tests
    rw = urlsplit(_secret_url(objs, _database_ref(operator)))
    assert (rw.username, rw.password) == ("voicetrack", passwords["password"])
    for spec in (web, *(t["spec"] for t in tests)):
        ro = urlsplit(_secret_url(objs, _database_ref(spec)))
        assert (ro.username, ro.password) == ("voicetrack_ro", passwords["readOnlyPassword"])
        assert (ro.hostname, ro.path) == (rw.hostname, rw.path)


def test_an_external_database_leaves_the_readers_on_its_url(helm: Helm) -> None:  # noqa: F811
    objs = _render(helm, *WEB_ON)
    web = _one(objs, "Deployment", "v-voicetrack-web")["spec"]["template"]["spec"]
    assert _database_ref(web) == {"name": "v-voicetrack-database", "key": "url"}
    assert not [o for o in objs if o["metadata"]["name"].endswith("-database-readonly")]


@pytest.mark.parametrize(("args", "message"), [
    ((*PG, "--set", "postgresql.user=postgres"), "not be postgres"),
    ((*PG, "--set", "postgresql.readOnlyUser=voicetrack"), "differ"),
    (("--set", "seaweedfs.enabled=true", "--set", "networkPolicy.enabled=false"),
     "seaweedfs.enabled needs networkPolicy.enabled"),
])
def test_unsafe_bundled_values_are_refused(helm: Helm, args: tuple[str, ...],  # noqa: F811
                                           message: str) -> None:
    res = helm("template", "v", str(CHART), *KUBE, *args, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_seaweedfs_with_the_network_policy_renders_its_ingress_rule(
        helm: Helm) -> None:  # noqa: F811
    objs = _render(helm, "--set", "seaweedfs.enabled=true")
    policy = _one(objs, "NetworkPolicy", "v-voicetrack-seaweedfs")
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == [8333]


def test_a_reinstall_reads_the_kept_password_back(
        helm: Helm, cluster: LocalCluster, kubectl: Kubectl,  # noqa: F811
        namespace: str) -> None:
    """`helm install`, `helm uninstall`, `helm install` of the same release on the local
    API server: the password Secret outlives the uninstall, so the second install's
    `lookup` reads the same passwords into it and into the operator's database URL (the
    claim kept by the uninstall holds a database with those passwords). No pod runs:
    operator.replicas=0, and the PostgreSQL pod waits for its claim (no PersistentVolume)."""
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin",
           "HOME": str(cluster.state_dir)}  # fmt: skip
    values = ("--namespace", namespace, *PG, "--set", "operator.replicas=0",
              "--set", "s3.endpoint=http://s3.invalid:8333")  # fmt: skip

    def secrets() -> tuple[dict[str, str], str]:
        def get(name: str) -> dict[str, str]:
            doc = json.loads(kubectl("-n", namespace, "get", "secret", name, "-o",
                                     "json").stdout)  # fmt: skip
            return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
        return get("vr-voicetrack-postgresql"), get("vr-voicetrack-database")["url"]

    helm("install", "vr", str(CHART), *values, env=env)
    first, url = secrets()
    assert urlsplit(url).password == first["password"]
    helm("uninstall", "vr", "--namespace", namespace, "--wait", "--timeout", "60s", env=env)
    kept = json.loads(kubectl("-n", namespace, "get", "secret", "-o", "json").stdout)["items"]
    assert [s["metadata"]["name"] for s in kept
            if s["metadata"]["name"].startswith("vr-")] == ["vr-voicetrack-postgresql"]
    helm("install", "vr", str(CHART), *values, env=env)
    again, url = secrets()
    assert again == first
    assert urlsplit(url).password == first["password"]
    helm("uninstall", "vr", "--namespace", namespace, "--wait", "--timeout", "60s", env=env,
         check=False)
