"""The chart's `bot:` section: off by default (manifests/ unchanged); on, the bot runs from
the recorder image with `args: [bot]`, one replica, its token from a Secret, and a
ServiceAccount whose Role is exactly docs/bot.md's: the API server admits the objects under
Pod Security `restricted`, and the account may manage RecordingSessions and nothing else."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.e2e.test_helm import CHART, KUBE, ROOT, Helm, docs, helm  # noqa: F401  (fixture)
from tests.fixtures.cluster import Kubectl
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

ON = ("--set", "bot.enabled=true", "--set", "bot.token=MTIz.token.value",
      "--set-string", "bot.guilds[0]=123456789012345678",
      "--set-string", "bot.roles[0]=223456789012345678",
      "--set", "bot.specDefaults.chunkSeconds=30")


def bot_objects(text: str) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in docs(text) if o["metadata"]["name"].endswith("-bot")}


def test_the_bot_renders_only_when_enabled(helm: Helm) -> None:  # noqa: F811
    assert bot_objects(helm("template", "v", str(CHART), *KUBE).stdout) == {}
    objs = bot_objects(helm("template", "v", str(CHART), *KUBE, *ON).stdout)
    assert sorted(objs) == ["Deployment", "NetworkPolicy", "Role", "RoleBinding", "Secret",
                           "ServiceAccount"]  # fmt: skip
    dep = objs["Deployment"]["spec"]
    assert dep["replicas"] == 1 and dep["strategy"] == {"type": "Recreate"}
    pod = dep["template"]["spec"]
    assert pod["serviceAccountName"] == "v-voicetrack-bot"
    (c,) = pod["containers"]
    assert c["args"] == ["bot"] and c["image"].startswith("voicetrack/recorder:")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["VOICETRACK_DISCORD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "v-voicetrack-bot", "key": "token"}
    assert env["VOICETRACK_BOT_GUILDS"]["value"] == "123456789012345678"
    assert env["VOICETRACK_BOT_ROLES"]["value"] == "223456789012345678"
    assert json.loads(env["VOICETRACK_BOT_SPEC_DEFAULTS"]["value"]) == {"chunkSeconds": 30}
    assert env["VOICETRACK_NAMESPACE"]["value"] == "default"
    # The Role is the one docs/bot.md documents (and tests/e2e/test_bot_sessions.py uses).
    documented = next(d for d in yaml.safe_load_all(re.search(
        r"## RBAC.*?```yaml\n(.*?)```", (ROOT / "docs" / "bot.md").read_text(),
        re.S).group(1)) if d["kind"] == "Role")  # type: ignore[union-attr]
    assert objs["Role"]["rules"] == [
        {k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in documented["rules"]]

    own = bot_objects(helm("template", "v", str(CHART), *KUBE, "--set", "bot.enabled=true",
                           "--set", "bot.existingSecret=my-bot",
                           "--set", "bot.namespace=team").stdout)
    assert "Secret" not in own
    assert own["Role"]["metadata"]["namespace"] == "team"
    assert own["RoleBinding"]["subjects"][0]["namespace"] == "default"


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "bot.enabled=true"), "bot.token is required"),
    ((*ON, "--set-string", "bot.guilds[0]=guild"), "/bot/guilds/0"),
    ((*ON, "--set", "bot.followSeconds=900"), "/bot/followSeconds"),
    ((*ON, "--set", "bot.bogus=1"), "bogus"),
])
def test_bad_bot_values_are_refused(helm: Helm, args: tuple[str, ...],  # noqa: F811
                                    message: str) -> None:
    res = helm("template", "v", str(CHART), *KUBE, *args, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_the_api_server_admits_the_bot_and_limits_its_account(
        helm: Helm, kubectl: Kubectl, namespace: str, cluster: LocalCluster,  # noqa: F811
        ) -> None:
    install_crds(cluster.kubeconfig)  # `auth can-i` resolves the resource by discovery
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")
    objs = bot_objects(helm("template", "v", str(CHART), *KUBE, "--namespace", namespace,
                            *ON).stdout)
    rbac = [objs[k] for k in ("Secret", "ServiceAccount", "Role", "RoleBinding")]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in rbac))
    res = kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                  input=json.dumps(objs["Deployment"]))
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    sa = f"system:serviceaccount:{namespace}:v-voicetrack-bot"

    def can(verb: str, resource: str) -> str:
        return str(kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", sa,
                           check=False).stdout.strip())

    for verb in ("get", "list", "create", "patch", "delete"):
        assert can(verb, "recordingsessions.voicetrack.dev") == "yes", verb
    for verb, resource in (("get", "secrets"), ("list", "pods"), ("create", "jobs"),
                           ("create", "recordingchunks.voicetrack.dev"),
                           ("update", "recordingsessions.voicetrack.dev/status")):
        assert can(verb, resource) == "no", (verb, resource)
