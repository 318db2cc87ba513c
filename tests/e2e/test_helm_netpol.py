"""The chart's NetworkPolicies (templates/networkpolicy.yaml), rendered with `helm template`
and matched against the labels the operator's builders put on the pods it makes: each
recorder, transcoder and promotion pod is selected by exactly its policy, which allows no
ingress and only the egress the issue names (recorder: DNS, API server, S3, Discord;
transcoder and promoter: DNS and S3). The local cluster has no network plugin enforcing
them; the images tier installs them (the API server validates each)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_helm import CHART, KUBE, Helm, docs, helm  # noqa: F401  (fixture)
from voicetrack.chunkspec import ChunkSpec
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import PodSettings, SessionRef, build_recorder_pod
from voicetrack_operator.jobs import build_live_job, build_promote_job, build_transcode_job

pytestmark = pytest.mark.e2e

SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})  # fmt: skip
DNS = {("UDP", 53), ("TCP", 53)}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's meaning (matchLabels and matchExpressions, ANDed)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def builder_pods(namespace: str) -> dict[str, dict[str, str]]:
    """The labels of the pods the operator's builders make for a session in `namespace`."""
    owner = SessionRef(name="standup", namespace=namespace, uid="uid-1")
    chunk = ChunkSpec(session_name="standup", meeting_id="m" * 16, guild_id=SPEC.guild_id,
                      index=0, start_ms=0, end_ms=1000, tracks=[])  # fmt: skip
    settings = PodSettings()
    return {
        "recorder": build_recorder_pod(owner, SPEC, "m" * 16, 0, settings)["metadata"]["labels"],
        "transcoder": build_transcode_job(owner, chunk, SPEC, settings)
        ["spec"]["template"]["metadata"]["labels"],
        "promoter": build_promote_job(owner, "plan.json", SPEC, settings)
        ["spec"]["template"]["metadata"]["labels"],
        "live": build_live_job(owner, SPEC, "m" * 16, 1, settings)
        ["spec"]["template"]["metadata"]["labels"],
    }


def ports(rules: list[dict[str, Any]]) -> set[tuple[str, int | None]]:
    return {(p["protocol"], p.get("port")) for r in rules for p in r.get("ports") or []}


def test_each_pod_the_operator_makes_has_exactly_its_policy(helm: Helm) -> None:  # noqa: F811
    objs = docs(helm("template", "vt", str(CHART), *KUBE, "--namespace", "rel",
                     "--set", "networkPolicy.namespaces={team,rel}",
                     "--set", "s3.endpoint=http://s3.example:8333",
                     "--set", "s3.podEndpoint=https://s3.pods.example:9000",
                     "--set", "bot.enabled=true", "--set", "bot.token=t").stdout)  # fmt: skip
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for p in pols:
        by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
    assert sorted(by_ns) == ["rel", "team"]  # the release's and the listed one, once each
    expect = {"recorder": "vt-voicetrack-recorder", "transcoder": "vt-voicetrack-transcoder",
              "promoter": "vt-voicetrack-transcoder",
              "live": "vt-voicetrack-transcoder"}  # fmt: skip
    for ns in ("rel", "team"):
        for component, labels in builder_pods(ns).items():
            chosen = [p for p in by_ns[ns] if selects(p["spec"]["podSelector"], labels)]
            assert [p["metadata"]["name"] for p in chosen] == [expect[component]], component
            (pol,) = chosen
            assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
            assert "ingress" not in pol["spec"]  # no ingress at all
            egress = pol["spec"]["egress"]
            s3 = {("TCP", 9000)}  # the pods' endpoint's port, not the operator's
            if component == "recorder":
                api, discord = {("TCP", 443), ("TCP", 6443)}, {("TCP", 443), ("UDP", None)}
                assert ports(egress) == DNS | api | s3 | discord
                # Discord's rule reaches public addresses only
                (d,) = [r for r in egress if ("UDP", None) in ports([r])]
                blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for p in d["to"]}
                assert "10.0.0.0/8" in blocks["0.0.0.0/0"] and "fc00::/7" in blocks["::/0"]
            else:
                assert ports(egress) == DNS | s3
                assert all("ipBlock" not in peer for r in egress for peer in r.get("to") or []
                           if ("TCP", 9000) not in ports([r]))  # fmt: skip

    deploys = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    for name, pol_name in (("vt-voicetrack", "vt-voicetrack"),
                           ("vt-voicetrack-bot", "vt-voicetrack-bot")):  # fmt: skip
        labels = deploys[name]["spec"]["template"]["metadata"]["labels"]
        chosen = [p["metadata"]["name"] for p in by_ns["rel"]
                  if selects(p["spec"]["podSelector"], labels)]  # fmt: skip
        assert chosen == [pol_name], name
    op = next(p for p in pols if p["metadata"]["name"] == "vt-voicetrack")
    assert op["spec"]["policyTypes"] == ["Ingress"]  # its egress stays open (webhooks)
    assert ports(op["spec"]["ingress"]) == {("TCP", 8080), ("TCP", 9090)}
    bot = next(p for p in pols if p["metadata"]["name"] == "vt-voicetrack-bot")
    assert bot["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in bot["spec"]


def test_s3_port_defaults_from_the_scheme_and_peers_narrow_it(helm: Helm) -> None:  # noqa: F811
    objs = docs(helm("template", "vt", str(CHART), *KUBE,
                     "--set", "s3.endpoint=https://s3.amazonaws.com",
                     "--set", "networkPolicy.s3.peers[0].ipBlock.cidr=52.216.0.0/15").stdout)
    tx = next(o for o in objs if o["kind"] == "NetworkPolicy"
              and o["metadata"]["name"] == "vt-voicetrack-transcoder")  # fmt: skip
    s3_rule = tx["spec"]["egress"][1]
    assert ports([s3_rule]) == {("TCP", 443)}
    assert s3_rule["to"] == [{"ipBlock": {"cidr": "52.216.0.0/15"}}]


def test_the_bundled_seaweedfs_is_the_only_s3_peer_by_default(helm: Helm) -> None:  # noqa: F811
    """With the bundled SeaweedFS as the store and no networkPolicy.s3.peers, the S3 rules of
    recorder, transcoder and operator pods reach its pods only (before: any address on its
    port, so a recorder could reach any in-cluster service listening on 8333)."""
    objs = docs(helm("template", "vt", str(CHART), *KUBE, "--namespace", "rel",
                     "--set", "seaweedfs.enabled=true",
                     "--set", "networkPolicy.namespaces={team}",
                     "--set", "networkPolicy.operatorEgress.enabled=true").stdout)
    seaweed = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rel"}},
               "podSelector": {"matchLabels": {
                   "app.kubernetes.io/name": "voicetrack", "app.kubernetes.io/instance": "vt",
                   "app.kubernetes.io/component": "seaweedfs"}}}
    checked = 0
    for pol in (o for o in objs if o["kind"] == "NetworkPolicy"):
        name = pol["metadata"]["name"]
        if name.endswith(("-recorder", "-transcoder")) or name == "vt-voicetrack":
            (s3_rule,) = [r for r in pol["spec"]["egress"] if ("TCP", 8333) in ports([r])]
            assert s3_rule.get("to") == [seaweed], name
            checked += 1
    assert checked == 5  # recorder and transcoder in rel and team, the operator


def test_a_pod_endpoint_beside_the_bundled_seaweedfs_keeps_s3_open(helm: Helm) -> None:  # noqa: F811
    """`s3.podEndpoint` (a proxy, say) wins for the operator's pods over the bundled
    SeaweedFS: their S3 rule must not be narrowed to SeaweedFS's pods (review: uploads and
    transcodes would have been blocked on the proxy's port)."""
    objs = docs(helm("template", "vt", str(CHART), *KUBE, "--namespace", "rel",
                     "--set", "seaweedfs.enabled=true",
                     "--set", "s3.podEndpoint=http://proxy.rel.svc:9000").stdout)
    rec = next(o for o in objs if o["kind"] == "NetworkPolicy"
               and o["metadata"]["name"] == "vt-voicetrack-recorder")  # fmt: skip
    (s3_rule,) = [r for r in rec["spec"]["egress"] if ("TCP", 9000) in ports([r])]
    assert "to" not in s3_rule


def test_policies_are_off_when_disabled(helm: Helm) -> None:  # noqa: F811
    objs = docs(helm("template", "vt", str(CHART), *KUBE,
                     "--set", "networkPolicy.enabled=false").stdout)
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


def test_operator_egress_is_open_by_default_and_narrow_when_asked(helm: Helm) -> None:  # noqa: F811
    """networkPolicy.operatorEgress (review: webhook SSRF, a second layer): DNS, the API
    server, S3 on the operator's endpoint port, the bundled PostgreSQL, and webhooks on
    80/443 to public addresses only; `extra` rules appended as given."""
    def operator_policy(*sets: str) -> dict[str, Any]:
        objs = docs(helm("template", "vt", str(CHART), *KUBE, "--namespace", "rel",
                         "--set", "s3.endpoint=http://s3.example:8333",
                         *[a for s in sets for a in ("--set", s)]).stdout)
        return next(o for o in objs if o["kind"] == "NetworkPolicy"
                    and o["metadata"]["name"] == "vt-voicetrack")  # fmt: skip

    default = operator_policy()
    assert default["spec"]["policyTypes"] == ["Ingress"] and "egress" not in default["spec"]
    pol = operator_policy("networkPolicy.operatorEgress.enabled=true", "postgresql.enabled=true",
                          "networkPolicy.operatorEgress.extra[0].ports[0].port=5433",
                          "networkPolicy.operatorEgress.extra[0].ports[0].protocol=TCP",
                          "networkPolicy.operatorEgress.extra[0].to[0].ipBlock.cidr="
                          "10.9.0.4/32")
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = pol["spec"]["egress"]
    assert ports(egress) == DNS | {("TCP", 443), ("TCP", 6443), ("TCP", 8333), ("TCP", 5432),
                                   ("TCP", 80), ("TCP", 5433)}  # fmt: skip
    (db,) = [r for r in egress if ("TCP", 5432) in ports([r])]
    assert db["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
        "postgresql"
    (hooks,) = [r for r in egress if ("TCP", 80) in ports([r])]
    blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for p in hooks["to"]}
    for internal in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                     "169.254.0.0/16", "127.0.0.0/8"):
        assert internal in blocks["0.0.0.0/0"], internal
    assert {"fc00::/7", "fe80::/10", "::1/128"} <= set(blocks["::/0"])
    assert egress[-1] == {"ports": [{"port": 5433, "protocol": "TCP"}],
                          "to": [{"ipBlock": {"cidr": "10.9.0.4/32"}}]}


def test_the_webhook_allow_list_reaches_the_operator(helm: Helm) -> None:  # noqa: F811
    def env(*sets: str) -> dict[str, str]:
        objs = docs(helm("template", "vt", str(CHART), *KUBE,
                         *[a for s in sets for a in ("--set", s)]).stdout)
        dep = next(o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "vt-voicetrack")  # fmt: skip
        return {e["name"]: e.get("value") for e in
                dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert not {k for k in env() if k.startswith("VOICETRACK_WEBHOOK_ALLOW")}  # none by default
    got = env("operator.webhook.allowCIDRs={10.20.0.0/16,fd12::/64}",
              "operator.webhook.allowHosts={hooks.team-a.svc.cluster.local}")
    assert got["VOICETRACK_WEBHOOK_ALLOW_CIDRS"] == "10.20.0.0/16,fd12::/64"
    assert got["VOICETRACK_WEBHOOK_ALLOW_HOSTS"] == "hooks.team-a.svc.cluster.local"
    bad = helm("template", "vt", str(CHART), *KUBE, "--set",
               "operator.webhook.allowCIDRs={http://10.0.0.1/}", check=False)
    assert bad.returncode != 0 and "/operator/webhook/allowCIDRs/0" in bad.stderr, bad.stderr
