"""The Helm chart (helm/voicetrack) and its rendering (manifests/): lint, schema, drift, and
the operator running with exactly the chart's RBAC on the local control plane.

helm is built from the Go module proxy by `voicetrack local build` (`ensure_helm`), like
the control plane. The RBAC test stops the shared `stack` operator (admin credentials)
while it runs, so the only operator acting is the one holding the chart's ServiceAccount
token; the stack operator is started again afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import get, session_yaml, wait_for, wav_bytes
from tests.fixtures.cluster import Kubectl
from tests.fixtures.stack import Stack
from voicetrack_local.build import K8S_VERSION, ensure_helm
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.stack import OperatorProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "voicetrack"
RENDER = ROOT / "helm" / "render-manifests.sh"
MANIFESTS = ROOT / "manifests" / "voicetrack.yaml"
RELEASE_NS = "voicetrack"  # the namespace manifests/ is rendered for
USER = "400000000000000021"
AUDIO_MS = 6_000
KUBE = ("--kube-version", K8S_VERSION)  # helm template's offline default (v1.20) is too old

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm() -> Helm:
    """``helm(*args, check=True, env=None)``: the helm built by `voicetrack local build`."""
    exe = ensure_helm()

    def run(*args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=180,
                              check=False, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_chart_lints_and_the_schema_rejects_bad_values_naming_the_field(helm: Helm) -> None:
    lint = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    bad = {
        "operator.healthPort=http": "/operator/healthPort",
        "operator.logLevel=LOUD": "/operator/logLevel",
        "image.pullPolicy=Sometimes": "/image/pullPolicy",
        "s3.endpoint=not-a-url": "/s3/endpoint",
        "s3.publicEndpoint=s3.example.com": "/s3/publicEndpoint",
        "s3.region=EU West": "/s3/region",
        "s3.endpiont=http://x:1": "endpiont",
        "database.url=mysql://db": "/database/url",
        "operator.tempTtlHours=0": "/operator/tempTtlHours",
        "resources.requests.memory=lots": "/resources/requests/memory",
    }
    for value, field in bad.items():
        res = helm("template", "v", str(CHART), *KUBE, "--set", value, check=False)
        assert res.returncode != 0, value
        assert "values don't meet the specifications of the schema" in res.stderr, res.stderr
        assert field in res.stderr, (value, res.stderr)
    # Without an existingSecret the database URL is required.
    res = helm("template", "v", str(CHART), *KUBE, "--set", "database.url=", check=False)
    assert res.returncode != 0 and "database.url is required" in res.stderr, res.stderr


def test_watch_namespaces_that_would_leave_sessions_unserved_or_refused_are_rejected(
        helm: Helm) -> None:
    """operator.watchNamespaces (VOICETRACK_NAMESPACES) against the namespaces sessions are
    allowed in (VOICETRACK_POLICY_NAMESPACES) and the bot's: a combination in which the
    bot's sessions are never seen, or every session of a served namespace is Refused,
    fails at install, naming the values."""
    def render(*values: str) -> subprocess.CompletedProcess[str]:
        return helm("template", "rel", str(CHART), *KUBE, "--namespace", "rel",
                    *[a for v in values for a in ("--set", v)], check=False)

    bot = ("bot.enabled=true", "bot.namespace=recordings", "bot.existingSecret=bot")
    refused = {
        ("operator.watchNamespaces={team-a}", *bot): "does not serve the bot's namespace",
        ("operator.watchNamespaces={team-a}",): "serves team-a, which is not in",
        ("operator.watchNamespaces={team-*,!team-x}", "networkPolicy.namespaces={team-x}"):
            "networkPolicy.namespaces lists team-x",
        ("operator.watchNamespaces={Team}",): "/operator/watchNamespaces/0",
    }
    for values, message in refused.items():
        res = render(*values)
        assert res.returncode != 0 and message in res.stderr, (values, res.stderr)
    ok = render("operator.watchNamespaces={team-*,rel,recordings}",
                "networkPolicy.namespaces={team-b}", *bot)
    assert ok.returncode == 0, ok.stderr
    assert 'value: "team-*,rel,recordings"' in ok.stdout
    assert "verbs: [get, list, watch]" in ok.stdout  # kopf lists namespaces for its globs
    assert "VOICETRACK_NAMESPACES" not in render().stdout  # default: the whole cluster


def test_each_release_has_a_peering_of_its_own(helm: Helm) -> None:
    """With operator.ha, the ClusterKopfPeering (cluster-scoped) and the replicas'
    VOICETRACK_PEERING default to the release's full name: two releases (e.g. with disjoint
    operator.watchNamespaces) never share one peering, in which only one replica of both
    releases would act. Before, both defaulted to `voicetrack`."""
    def peering(release: str, *values: str) -> tuple[str, str]:
        objs = docs(helm("template", release, str(CHART), *KUBE, "--set",
                         "operator.ha.enabled=true", "--set", "operator.replicas=2", "--set",
                         "database.url=postgresql+psycopg://u:p@db:5432/v",
                         *[a for v in values for a in ("--set", v)]).stdout)
        obj = next(o for o in objs if o["kind"] == "ClusterKopfPeering")
        deploy = next(o for o in objs if o["kind"] == "Deployment")
        env = {e["name"]: e.get("value")
               for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        return obj["metadata"]["name"], str(env["VOICETRACK_PEERING"])

    assert peering("team-a") == ("team-a-voicetrack", "team-a-voicetrack")
    assert peering("team-b") == ("team-b-voicetrack", "team-b-voicetrack")
    assert peering("team-a", "operator.ha.peeringName=shared") == ("shared", "shared")


def test_an_upgrade_keeps_the_peering_the_release_already_owns(helm: Helm,
                                                               stack: Stack) -> None:
    """A release installed when the peering's default name was `voicetrack` keeps it on
    upgrade (`lookup` of the ClusterKopfPeering Helm made for it): a new name would roll
    the new replicas into an empty peering, where they act at once, while the old ones,
    whose peering Helm deletes, act on until they stop. Another release's `voicetrack`
    changes nothing. Rendered against the local cluster (`--dry-run=server`)."""
    ns = f"vt-peer-{secrets.token_hex(3)}"
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig)}

    def name(release: str) -> str:
        out = helm("template", release, str(CHART), *KUBE, "--namespace", ns,
                   "--dry-run=server", "--set", "operator.ha.enabled=true", "--set",
                   "operator.replicas=2", "--set",
                   "database.url=postgresql+psycopg://u:p@db:5432/v", env=env).stdout
        obj = next(o for o in docs(out) if o["kind"] == "ClusterKopfPeering")
        return str(obj["metadata"]["name"])

    assert name("old") == "old-voicetrack"  # nothing to keep: the release's full name
    owned = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
             "metadata": {"name": "voicetrack", "annotations": {
                 "meta.helm.sh/release-name": "old", "meta.helm.sh/release-namespace": ns}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps(owned))
    try:
        assert name("old") == "voicetrack"  # the upgrade keeps it
        assert name("new") == "new-voicetrack"  # not this release's
    finally:
        stack.kubectl("delete", "clusterkopfpeering", "voicetrack", "--ignore-not-found")


def test_existing_secrets_replace_the_chart_managed_ones(helm: Helm) -> None:
    out = helm("template", "v", str(CHART), *KUBE, "--namespace", "ops",
               "--set", "s3.existingSecret=my-s3", "--set", "database.existingSecret=my-db",
               "--set", "database.existingSecretKey=dsn",
               "--set", "discord.existingSecret=my-bot").stdout
    objs = docs(out)
    assert [o for o in objs if o["kind"] == "Secret"] == []
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VOICETRACK_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-s3", "key": "accessKey"}
    assert env["VOICETRACK_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-db", "key": "dsn"}
    assert env["VOICETRACK_S3_SECRET_NAME"]["value"] == "my-s3"
    assert env["VOICETRACK_DISCORD_SECRET_NAME"]["value"] == "my-bot"
    # Without them the chart manages all three, holding what the values say.
    objs = docs(helm("template", "v", str(CHART), *KUBE, "--set", "s3.accessKey=AK",
                     "--set", "s3.secretKey=SK", "--set", "discord.token=T").stdout)
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objs if o["kind"] == "Secret"}
    assert secrets == {"voicetrack-s3": {"accessKey": "AK", "secretKey": "SK"},
                       "v-voicetrack-database": {
                           "url": "sqlite+aiosqlite:////var/lib/voicetrack/voicetrack.db"},
                       "voicetrack-discord": {"token": "T"}}


def test_pod_security_restricted_and_probes(helm: Helm) -> None:
    objs = docs(helm("template", "v", str(CHART), *KUBE,
                     "--set", "operator.healthPort=8181").stdout)
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert {"name": "health", "containerPort": 8181, "protocol": "TCP"} in c["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VOICETRACK_HEALTH_PORT"] == "8181"
    assert env["VOICETRACK_LISTEN_ADDRESS"] == "0.0.0.0"  # reachable by the kubelet


def _operator_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(next(o for o in objs if o["kind"] == "Deployment" and o["spec"]["template"][
        "spec"]["containers"][0]["name"] == "operator")["spec"]["template"]["spec"])


def test_the_default_database_lives_on_a_kept_claim_mounted_at_var_lib(helm: Helm) -> None:
    """Issue 11 item 3: SQLite on a ReadWriteOnce PersistentVolumeClaim by default, one pod
    at a time on it; an emptyDir with a warning when persistence is off; no claim for an
    external database unless asked."""
    objs = docs(helm("template", "v", str(CHART), *KUBE).stdout)
    (pvc,) = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "v-voicetrack-data"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"],
                           "resources": {"requests": {"storage": "1Gi"}}}  # default class
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert deploy["spec"]["strategy"] == {"type": "Recreate"} and deploy["spec"]["replicas"] == 1
    pod = _operator_pod(objs)
    assert pod["securityContext"]["fsGroup"] == 10001
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "v-voicetrack-data"}} in (
        pod["volumes"])
    assert {"name": "data", "mountPath": "/var/lib/voicetrack"} in (
        pod["containers"][0]["volumeMounts"])
    secret = next(o for o in objs if o["metadata"]["name"] == "v-voicetrack-database")
    assert secret["stringData"]["url"] == "sqlite+aiosqlite:////var/lib/voicetrack/voicetrack.db"

    def render(*sets: str) -> list[dict[str, Any]]:
        args = [a for s in sets for a in ("--set", s)]
        return docs(helm("template", "v", str(CHART), *KUBE, *args).stdout)

    objs = render("persistence.storageClassName=-", "persistence.size=5Gi",
                  "persistence.accessModes={ReadWriteOncePod}", "persistence.keepOnUninstall=false")
    (pvc,) = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert "annotations" not in pvc["metadata"]
    assert pvc["spec"] == {"accessModes": ["ReadWriteOncePod"], "storageClassName": "",
                           "resources": {"requests": {"storage": "5Gi"}}}
    objs = render("persistence.existingClaim=mine")
    assert [o for o in objs if o["kind"] == "PersistentVolumeClaim"] == []
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "mine"}} in (
        _operator_pod(objs)["volumes"])
    # persistence off: today's behaviour, the SQLite file in an emptyDir.
    objs = render("persistence.enabled=false")
    assert [o for o in objs if o["kind"] == "PersistentVolumeClaim"] == []
    assert {"name": "data", "emptyDir": {}} in _operator_pod(objs)["volumes"]
    # An external database: no claim, no data volume, unless asked.
    for ext in ("database.url=postgresql+psycopg://u:p@db:5432/vt", "database.existingSecret=db"):
        objs = render(ext)
        assert [o for o in objs if o["kind"] == "PersistentVolumeClaim"] == [], ext
        assert [v["name"] for v in _operator_pod(objs)["volumes"]] == ["tmp"], ext
        objs = render(ext, "persistence.withExternalDatabase=true")
        assert [o["kind"] for o in objs].count("PersistentVolumeClaim") == 1, ext
    # A SQLite file outside the claim would be lost: refused, naming both.
    res = helm("template", "v", str(CHART), *KUBE, "--set",
               "database.url=sqlite+aiosqlite:////tmp/voicetrack.db", check=False)
    assert res.returncode != 0 and "persistence.mountPath (/var/lib/voicetrack/)" in res.stderr
    for bad, field in (("persistence.size=lots", "/persistence/size"),
                       ("persistence.mountPath=/tmp", "/persistence/mountPath"),
                       ("persistence.accessModes={RWO}", "/persistence/accessModes/0")):
        res = helm("template", "v", str(CHART), *KUBE, "--set", bad, check=False)
        assert res.returncode != 0 and field in res.stderr, (bad, res.stderr)


def test_the_api_server_admits_the_render_under_pod_security_restricted(
        helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")
    objs = docs(helm("template", "v", str(CHART), *KUBE, "--namespace", namespace).stdout)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
                     "Deployment", "Job", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
                     "PersistentVolumeClaim", "Pod", "Role", "RoleBinding", "Secret",
                     "Secret", "ServiceAccount", "ServiceAccount", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                     "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"]
    # Every object but the Pod (its ServiceAccount is not created by a dry run) passes the
    # API server's validation and admission.
    res = kubectl("apply", "--dry-run=server", "-f", "-", check=False, input="\n---\n".join(
        json.dumps(o) for o in objs if o["kind"] != "Pod"))
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    # Pod Security admission enforces on Pods: the operator's pod template and the test pod.
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "operator", "namespace": namespace},
             "spec": deploy["spec"]["template"]["spec"]},
            next(o for o in objs if o["kind"] == "Pod")]
    for pod in pods:
        pod["spec"]["serviceAccountName"] = "default"  # the rendered ones are not created
        res = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod),
                      check=False)
        assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    bad = json.loads(json.dumps(pods[0]))
    del bad["spec"]["containers"][0]["securityContext"]["capabilities"]
    res = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and "restricted" in res.stderr, res.stderr  # the check bites


def test_manifests_match_a_fresh_render(helm: Helm, tmp_path: Path) -> None:
    fresh = tmp_path / "voicetrack.yaml"
    subprocess.run(["sh", str(RENDER), str(fresh)], check=True, capture_output=True,
                   timeout=120, env={**os.environ, "HELM": str(ensure_helm())})
    assert MANIFESTS.read_text() == fresh.read_text(), (
        "manifests/ is stale: run helm/render-manifests.sh and commit the result")
    kinds = [o["kind"] for o in docs(fresh.read_text())]
    # no Helm hooks: `kubectl apply` would run the uninstall clean-up Job at install
    assert "helm.sh/hook" not in fresh.read_text()
    # ours and kopf's peering CRD (operator.ha)
    assert kinds.count("CustomResourceDefinition") == 3 and "Deployment" in kinds
    # The CRDs are the ones in crds/ (the chart holds symlinks), also in a packaged chart.
    for name in ("recordingsessions.yaml", "recordingchunks.yaml"):
        assert (ROOT / "crds" / name).read_text().strip() in fresh.read_text()
    helm("package", str(CHART), "--destination", str(tmp_path))
    (pkg,) = tmp_path.glob("voicetrack-*.tgz")
    with tarfile.open(pkg) as tar:
        member = tar.getmember("voicetrack/crds/recordingsessions.yaml")
        assert member.isfile()
        data = tar.extractfile(member)
        assert data is not None
        assert data.read().decode() == (ROOT / "crds" / "recordingsessions.yaml").read_text()


def test_helm_install_runs_the_operator_deployment_with_its_service_account(
        helm: Helm, stack: Stack, postgres_server: PostgresServer) -> None:
    """`helm install --wait` on the local cluster: the node agent runs the Deployment's pod
    (its `command`, with a token of the chart's ServiceAccount), whose /healthz answers on
    the port from the values; `helm uninstall` stops it. (`helm test` itself needs
    `kubectl exec`, which the local node agent does not serve.)"""
    ns = f"vt-helm-{secrets.token_hex(3)}"
    release = "vth"
    health, metrics = free_port(), free_port()
    db_url = postgres_server.create_database(f"vt_helm_{secrets.token_hex(4)}")
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig)}
    stack.kubectl("create", "namespace", ns)
    try:
        out = helm("install", release, str(CHART), "--namespace", ns, "--wait",
                   "--timeout", "90s",
                   "--set", f"s3.endpoint={stack.s3.endpoint}",
                   "--set", f"s3.accessKey={stack.s3.access_key}",
                   "--set", f"s3.secretKey={stack.s3.secret_key}",
                   "--set", f"s3.bucket={stack.s3.bucket}",
                   "--set", f"database.url={db_url}",
                   "--set", f"operator.healthPort={health}",
                   "--set", f"operator.metricsPort={metrics}",
                   # the local node agent runs pods on the host: keep them on the pod's
                   # own loopback address
                   "--set", "operator.listenAddress=$(POD_IP)", env=env)
        assert f"helm test {release} -n {ns}" in out.stdout
        assert "Data: the database is the external one" in out.stdout  # no claim for it
        pods = json.loads(stack.kubectl("-n", ns, "get", "pods", "-o", "json").stdout)["items"]
        (pod,) = pods
        assert pod["spec"]["serviceAccountName"] == f"{release}-voicetrack"
        ip = wait_for("the pod's IP", lambda: json.loads(stack.kubectl(
            "-n", ns, "get", "pod", pod["metadata"]["name"], "-o", "json").stdout)[
            "status"].get("podIP"), 60)
        assert ip != "127.0.0.1"
        wait_for("the operator's /healthz at its pod IP", lambda: _healthz(health, ip), 60)
        assert not _healthz(health), "bound to 127.0.0.1 too"
        status = json.loads(helm("status", release, "--namespace", ns, "-o", "json",
                                 env=env).stdout)
        assert status["info"]["status"] == "deployed"
    finally:
        helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s",
             env=env, check=False)
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    wait_for("the operator stopped", lambda: not _healthz(health, ip), 30)
    assert stack.kubectl("get", "clusterrole", f"{release}-voicetrack",
                         check=False).returncode != 0


def _healthz(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _apply_chart_rbac(stack: Stack) -> None:
    """Apply manifests/'s CRDs (ours and kopf's peering), ServiceAccount, ClusterRole and
    ClusterRoleBinding."""
    wanted = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
              "ClusterRoleBinding"}
    objs = [o for o in docs(MANIFESTS.read_text()) if o["kind"] in wanted]
    assert sorted(o["kind"] for o in objs) == sorted(
        ["CustomResourceDefinition"] * 3 + ["ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding"])
    if stack.kubectl("get", "namespace", RELEASE_NS, check=False).returncode != 0:
        stack.kubectl("create", "namespace", RELEASE_NS)
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                  input="\n---\n".join(json.dumps(o) for o in objs))


def _service_account_kubeconfig(stack: Stack, path: Path) -> Path:
    """A kubeconfig for the chart's ServiceAccount (TokenRequest via `kubectl create token`)."""
    token = stack.kubectl("-n", RELEASE_NS, "create", "token", "voicetrack",
                          "--duration=20m").stdout.strip()
    admin = yaml.safe_load(stack.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority")
    if ca and not Path(ca).is_absolute():
        cluster["certificate-authority"] = str(stack.kubeconfig.parent / ca)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "voicetrack",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "voicetrack-operator", "user": {"token": token}}],
        "contexts": [{"name": "voicetrack", "context": {
            "cluster": "local", "user": "voicetrack-operator"}}],
    }))
    return path


@pytest.fixture
def chart_operator(stack: Stack, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator process with only the chart's permissions; the admin `stack` operator
    is stopped meanwhile and started again afterwards."""
    _apply_chart_rbac(stack)
    kubeconfig = _service_account_kubeconfig(stack, tmp_path / "operator.kubeconfig")
    who = stack.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{RELEASE_NS}:voicetrack")
    denied = stack.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-A",
                           check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    op = OperatorProcess(kubeconfig, stack.s3, stack.database_url, tmp_path / "operator.log",
                         extra_env={"VOICETRACK_KUBECONFIG": str(kubeconfig)})
    stack.operator.stop()
    try:
        op.start()
        try:
            yield op
        finally:
            op.stop()
            print(f"chart operator log: {op.log_path}\n{op.tail(40)}")
    finally:
        stack.operator.start()
        for kind, name in (("clusterrolebinding", "voicetrack"), ("clusterrole", "voicetrack")):
            stack.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        stack.kubectl("delete", "namespace", RELEASE_NS, "--wait=false", check=False)


def test_operator_records_and_promotes_with_only_the_charts_rbac(
        stack: Stack, e2e_namespace: str, chart_operator: OperatorProcess) -> None:
    ns = e2e_namespace
    started = time.monotonic()
    spk = Speaker(user_id=USER, f0=180.0, talks=[(300, 2500), (3500, 5600)])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
    doc = json.loads(session_yaml(ns, "helm", [key] * 3))
    doc["spec"]["source"]["speakers"] = [{"userId": USER, "objectKey": key}]
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def transcoded() -> bool:
        st = (get(stack, ns, "recsess", "helm") or {}).get("status", {})
        chunks = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
        return st.get("recordedSeconds", 0) * 1000 >= AUDIO_MS and bool(chunks["items"]) and all(
            (c.get("status") or {}).get("transcodeStatus") == "done" for c in chunks["items"])

    wait_for("the audio recorded and transcoded", transcoded, 60, every_s=0.5)
    # a session whose recorder ended by itself is deleted by the operator (services.autostop)
    can = stack.kubectl("--kubeconfig", str(chart_operator.kubeconfig), "auth", "can-i",
                        "delete", "recordingsessions.voicetrack.dev", "-n", ns, check=False)
    assert can.stdout.strip() == "yes", can.stderr
    meeting = (get(stack, ns, "recsess", "helm") or {})["status"]["meetingId"]
    stack.kubectl("-n", ns, "delete", "recsess", "helm", "--wait=false")
    wait_for("promotion and clean-up", lambda: get(stack, ns, "recsess", "helm") is None, 60)

    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == [("mixed", None),
                                                              ("speaker", USER)]
    for r in recs:
        assert stack.store.digest(r.object_key) == (r.bytes, r.sha256)
    # Nothing refused along the way (kopf retries or degrades on a 403 and logs it). The
    # operator serves the whole cluster, where earlier tests' namespaces may still be
    # terminating: the API's 403 for those is not a missing permission.
    # An earlier test's namespace may also be gone already: kopf's event post then gets a
    # 404, which is not a permission either (seen in CI simulation).
    log = "\n".join(line for line in chart_operator.log_path.read_text(
        errors="replace").lower().splitlines()
        if "because it is being terminated" not in line and "code: 404" not in line)
    for sign in ("forbidden", " 403", "not enough permissions", "failed to post an event"):
        assert sign not in log, (sign, chart_operator.tail(60))
    print(f"helm rbac session: {time.monotonic() - started:.1f} s")


def test_the_bots_default_bucket_is_allowed_with_the_operators(helm: Helm) -> None:
    """Sessions the bot makes name `bot.specDefaults.storage.bucket`; since sessions may
    only use allowed buckets (VOICETRACK_S3_BUCKETS), an install whose bot writes to
    another bucket than `s3.bucket` had every `/record start` refused after the upgrade
    (review of the day's diff, fault 5). The chart adds that bucket by itself."""
    def env(*sets: str) -> dict[str, str]:
        args = [a for s in sets for a in ("--set", s)]
        objs = docs(helm("template", "v", str(CHART), *KUBE, *args).stdout)
        return {e["name"]: e.get("value", "") for e in _operator_pod(objs)["containers"][0]["env"]}
    assert "VOICETRACK_S3_BUCKETS" not in env()
    assert env("bot.specDefaults.storage.bucket=team-audio")["VOICETRACK_S3_BUCKETS"] \
        == "team-audio"
    assert env("bot.specDefaults.storage.bucket=team-audio",
               "s3.allowedBuckets={archive,team-audio}")["VOICETRACK_S3_BUCKETS"] \
        == "archive,team-audio"


def test_the_operator_gets_the_namespaces_the_network_policies_are_rendered_in(
        helm: Helm) -> None:
    """Issue 15: the NetworkPolicies confine recorder and transcoder pods only in the
    release namespace and `networkPolicy.namespaces`, while the operator serves every
    namespace. With them enabled the operator gets exactly the namespaces they are
    rendered in (VOICETRACK_POLICY_NAMESPACES) and refuses sessions elsewhere; disabled,
    no list (no check). Before, it had no list: a session in any other namespace ran its
    pods unconfined."""
    def render(*sets: str) -> tuple[str | None, set[str]]:
        args = [a for s in sets for a in ("--set", s)]
        objs = docs(helm("template", "v", str(CHART), "-n", "rel", *KUBE, *args).stdout)
        env = {e["name"]: e.get("value", "") for e in _operator_pod(objs)["containers"][0]["env"]}
        policed = {o["metadata"]["namespace"] for o in objs if o["kind"] == "NetworkPolicy"
                   and o["metadata"]["name"].endswith(("-recorder", "-transcoder"))}
        return env.get("VOICETRACK_POLICY_NAMESPACES"), policed

    value, policed = render()
    assert value == "rel" and policed == {"rel"}
    value, policed = render("networkPolicy.namespaces={team-a,rel,team-b}")
    assert value == "rel,team-a,team-b" and policed == {"rel", "team-a", "team-b"}
    value, policed = render("networkPolicy.enabled=false", "seaweedfs.enabled=false")
    assert value is None and not policed
    # the bot's sessions run in its namespace: policed there too, never refused there
    # (before, an upgrade with bot.namespace set refused every `/record start`)
    value, policed = render("bot.enabled=true", "bot.existingSecret=botsec",
                            "bot.namespace=recordings")
    assert value == "rel,recordings" and policed == {"rel", "recordings"}
