"""The chart's `web:` section (issue 14): off by default (manifests/ unchanged), on it
renders a Deployment, a Service, an optional Ingress and its Secret; the pod has no
Kubernetes token and Pod Security `restricted` settings, and the API server admits it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_helm import CHART, KUBE, Helm, docs, helm  # noqa: F401  (fixture)
from tests.fixtures.cluster import Kubectl

pytestmark = pytest.mark.e2e

ON = ("--set", "web.enabled=true",
      "--set", "database.url=postgresql+psycopg://vt:pw@db:5432/voicetrack",
      "--set", "web.baseUrl=https://voicetrack.example.com",
      "--set-string", "web.discord.clientId=123456789012345678",
      "--set", "web.discord.clientSecret=s3cret",
      "--set", "web.sessionSecret=0123456789abcdef0123456789abcdef")


def web_objects(text: str) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in docs(text) if o["metadata"]["name"].endswith("-web")}


def test_web_renders_only_when_enabled(helm: Helm) -> None:  # noqa: F811
    assert web_objects(helm("template", "v", str(CHART), *KUBE).stdout) == {}
    objs = web_objects(helm("template", "v", str(CHART), *KUBE, *ON,
                            "--set", "web.ingress.enabled=true",
                            "--set", "web.ingress.host=voicetrack.example.com").stdout)
    assert sorted(objs) == ["Deployment", "Ingress", "NetworkPolicy", "Secret", "Service",
                            "ServiceAccount"]
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["command"] == ["voicetrack-web"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["VOICETRACK_WEB_BASE_URL"]["value"] == "https://voicetrack.example.com"
    assert env["VOICETRACK_WEB_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "v-voicetrack-web", "key": "sessionSecret"}
    assert env["VOICETRACK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
        "v-voicetrack-database")
    assert objs["Ingress"]["spec"]["rules"][0]["host"] == "voicetrack.example.com"
    assert objs["Service"]["spec"]["selector"]["app.kubernetes.io/component"] == "web"

    # existing Secrets replace the chart-managed one; a read-only database URL of its own
    own = web_objects(helm("template", "v", str(CHART), *KUBE, *ON,
                           "--set", "web.existingSecret=my-web",
                           "--set", "web.database.existingSecret=ro-db").stdout)
    assert "Secret" not in own
    env = {e["name"]: e for e in own["Deployment"]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert env["VOICETRACK_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "ro-db", "key": "url"}


def test_web_bot_token_is_the_bots_or_its_own_secret(helm: Helm) -> None:  # noqa: F811
    def env(*extra: str) -> dict[str, Any]:
        objs = web_objects(helm("template", "v", str(CHART), *KUBE, *ON, *extra).stdout)
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        assert pod["volumes"][0]["emptyDir"] == {"sizeLimit": "4Gi"}
        return {e["name"]: e for e in pod["containers"][0]["env"]}

    plain = env()
    assert "VOICETRACK_DISCORD_BOT_TOKEN" not in plain
    assert plain["VOICETRACK_WEB_GUILD_REFRESH_SECONDS"]["value"] == "300"
    assert plain["VOICETRACK_WEB_NAMES_TTL_SECONDS"]["value"] == "600"
    assert plain["VOICETRACK_WEB_GUILD_MAX_AGE_SECONDS"]["value"] == "0"
    assert plain["VOICETRACK_WEB_MAX_BUNDLES"]["value"] == "2"
    with_bot = env("--set", "bot.enabled=true", "--set-string", "bot.token=abc")
    assert with_bot["VOICETRACK_DISCORD_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "v-voicetrack-bot", "key": "token"}
    with_bots_own = env("--set", "bot.enabled=true", "--set", "bot.existingSecret=botsec")
    assert with_bots_own["VOICETRACK_DISCORD_BOT_TOKEN"]["valueFrom"]["secretKeyRef"][
        "name"] == "botsec"
    own = env("--set", "bot.enabled=true", "--set", "bot.existingSecret=botsec",
              "--set", "web.discordTokenSecret=web-tok")
    assert own["VOICETRACK_DISCORD_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "web-tok", "key": "token"}


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "web.enabled=true"), "needs a database it can reach"),
    ((*ON, "--set", "web.baseUrl=voicetrack.example.com"), "/web/baseUrl"),
    ((*ON, "--set", "web.sessionSecret=short"), "/web/sessionSecret"),
    ((*ON, "--set", "web.bogus=1"), "bogus"),
    ((*ON, "--set", "web.guildRefreshSeconds=0"), "/web/guildRefreshSeconds"),
    ((*ON, "--set", "web.maxBundles=0"), "/web/maxBundles"),
    ((*ON, "--set", "web.tmpSizeLimit=lots"), "/web/tmpSizeLimit"),
])
def test_bad_web_values_are_refused(helm: Helm, args: tuple[str, ...],  # noqa: F811
                                    message: str) -> None:
    res = helm("template", "v", str(CHART), *KUBE, *args, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_the_api_server_admits_the_web_objects_under_restricted(
        helm: Helm, kubectl: Kubectl, namespace: str) -> None:  # noqa: F811
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")
    objs = web_objects(helm("template", "v", str(CHART), *KUBE, "--namespace", namespace,
                            *ON, "--set", "web.ingress.enabled=true",
                            "--set", "web.ingress.host=voicetrack.example.com").stdout)
    res = kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                  input="\n---\n".join(json.dumps(o) for o in objs.values()))
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": namespace},
           "spec": {**objs["Deployment"]["spec"]["template"]["spec"],
                    "serviceAccountName": "default"}}  # a dry run did not create its own
    res = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr


def test_bot_and_web_objects_name_their_component_once(helm: Helm) -> None:  # noqa: F811
    """Every rendered mapping has unique keys (a strict YAML reader, as `kubectl apply`'s,
    refuses a duplicate). The bot's and web's objects took the operator's labels and added
    their own component, writing `app.kubernetes.io/component` twice."""
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: Strict, node: yaml.MappingNode, deep: bool = False) -> Any:
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        assert not twice, f"{twice} twice at line {node.start_mark.line + 1}"
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    text = helm("template", "v", str(CHART), *KUBE, *ON, "--set", "bot.enabled=true",
                "--set-string", "bot.token=abc").stdout
    objs = [o for o in yaml.load_all(text, Loader=Strict) if o]
    components = {(o["kind"], o["metadata"]["name"]): o["metadata"].get("labels", {}).get(
        "app.kubernetes.io/component") for o in objs}
    assert components[("Deployment", "v-voicetrack-bot")] == "bot"
    assert components[("Deployment", "v-voicetrack-web")] == "web"
    assert components[("Secret", "v-voicetrack-web")] == "web"
