"""The chart without S3 keys (issue 15): no S3 Secret and no key variable anywhere (operator,
`helm test`, web, bot, and the Jobs the operator builds from the Deployment's settings);
every ServiceAccount carries the annotations its values give (an IRSA role); keys given
(or `s3.existingSecret`) keep today's render; half a pair is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_helm import CHART, KUBE, Helm, docs, helm  # noqa: F401  (fixture)
from tests.e2e.test_helm_bot import ON as BOT_ON
from tests.e2e.test_helm_web import ON as WEB_ON
from tests.unit.test_operator_builders import OWNER, SPEC, chunk
from voicetrack.resources import TRANSCODER_SERVICE_ACCOUNT
from voicetrack_operator.context import OperatorSettings
from voicetrack_operator.jobs import build_live_job, build_promote_job, build_transcode_job

pytestmark = pytest.mark.e2e

KEYS = {"VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY"}
ROLE = "arn:aws:iam::111122223333:role/voicetrack"
IRSA = "eks.amazonaws.com/role-arn"
ANNOTATED = ("--set", f"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}-op",
             "--set", "pods.transcoderServiceAccount.annotations."
                      f"eks\\.amazonaws\\.com/role-arn={ROLE}-tx",
             "--set", f"web.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}-web",
             "--set", f"bot.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE}-bot")


def containers(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container of the render by `<kind>/<name>` (Deployments and Pods)."""
    out = {}
    for o in objs:
        pod = o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else \
            o["spec"] if o["kind"] == "Pod" else None
        if pod is not None:
            for c in pod["containers"]:
                out[f"{o['kind']}/{o['metadata']['name']}"] = c
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def accounts(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o["metadata"].get("annotations", {})
            for o in objs if o["kind"] == "ServiceAccount"}


def test_without_keys_nothing_carries_a_key_and_accounts_carry_their_roles(
        helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    objs = docs(helm("template", "v", str(CHART), *KUBE, *WEB_ON, *BOT_ON, *ANNOTATED).stdout)
    assert "voicetrack-s3" not in {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    found = containers(objs)
    assert {"Deployment/v-voicetrack", "Deployment/v-voicetrack-web",
            "Deployment/v-voicetrack-bot", "Pod/v-voicetrack-test"} <= found.keys()
    for name, c in found.items():
        assert not KEYS & env_of(c).keys(), name
    operator = env_of(found["Deployment/v-voicetrack"])
    assert operator["VOICETRACK_S3_SECRET_NAME"]["value"] == ""
    sa = accounts(objs)
    assert sa["v-voicetrack"][IRSA] == f"{ROLE}-op"
    assert sa["v-voicetrack-test"][IRSA] == f"{ROLE}-op"  # helm test runs as the operator
    assert sa[TRANSCODER_SERVICE_ACCOUNT][IRSA] == f"{ROLE}-tx"
    assert sa["v-voicetrack-web"][IRSA] == f"{ROLE}-web"
    assert sa["v-voicetrack-bot"][IRSA] == f"{ROLE}-bot"
    web = next(o for o in objs if o["kind"] == "Deployment"
               and o["metadata"]["name"] == "v-voicetrack-web")["spec"]["template"]["spec"]
    assert web["serviceAccountName"] == "v-voicetrack-web"
    assert web["automountServiceAccountToken"] is False

    # the operator started with the Deployment's settings builds Jobs without keys
    for name in ("VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, e in operator.items():
        if "value" in e:
            monkeypatch.setenv(name, e["value"])
    settings = OperatorSettings.from_env()
    assert not settings.s3.has_keys
    for job in (build_transcode_job(OWNER, chunk(0, 0, 10_000), SPEC, settings.pods),
                build_promote_job(OWNER, "plan.json", SPEC, settings.pods),
                build_live_job(OWNER, SPEC, "m" * 16, 2, settings.pods)):
        pod = job["spec"]["template"]["spec"]
        assert not KEYS & env_of(pod["containers"][0]).keys()
        assert pod["serviceAccountName"] == TRANSCODER_SERVICE_ACCOUNT


def test_with_keys_every_component_reads_the_secret(helm: Helm) -> None:  # noqa: F811
    objs = docs(helm("template", "v", str(CHART), *KUBE, *WEB_ON, *BOT_ON,
                     "--set", "s3.accessKey=AK", "--set", "s3.secretKey=SK").stdout)
    secret = next(o for o in objs if o["kind"] == "Secret"
                  and o["metadata"]["name"] == "voicetrack-s3")
    assert secret["stringData"] == {"accessKey": "AK", "secretKey": "SK"}
    for name, c in containers(objs).items():
        env = env_of(c)
        assert env["VOICETRACK_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "voicetrack-s3", "key": "accessKey"}, name
    assert env_of(containers(objs)["Deployment/v-voicetrack"])[
        "VOICETRACK_S3_SECRET_NAME"]["value"] == "voicetrack-s3"
    # no annotations: the operator makes the transcoder's account itself
    assert TRANSCODER_SERVICE_ACCOUNT not in accounts(objs)


@pytest.mark.parametrize("half", ["s3.accessKey=AK", "s3.secretKey=SK"])
def test_half_a_key_pair_is_refused(helm: Helm, half: str) -> None:  # noqa: F811
    res = helm("template", "v", str(CHART), *KUBE, "--set", half, check=False)
    assert res.returncode != 0
    assert "s3.accessKey and s3.secretKey go together" in res.stderr, res.stderr
