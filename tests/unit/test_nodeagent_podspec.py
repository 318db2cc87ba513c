"""The node agent's container environment (:mod:`voicetrack_local.nodeagent.podspec`),
computed without a cluster from a pod dict and the Secrets / ConfigMaps it reads."""

from __future__ import annotations

import base64
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.nodeagent.podspec import (
    TERMINATION_ENV,
    ConfigError,
    Objects,
    container_env,
    env_refs,
    field_value,
    pod_ip,
    termination_log,
    tmpdir,
)

pytestmark = pytest.mark.unit

POD_DIR = Path("/state/agent/pods/ns_p_u-1")
CAPACITY = {"cpu": "2", "memory": "8Gi"}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


SECRETS: dict[str, dict[str, Any] | None] = {
    "creds": {"data": {"pw": b64("hunter2"), "user": b64("ada")}},
    "gone": None,
}
CONFIGMAPS: dict[str, dict[str, Any] | None] = {
    "cfg": {"data": {"colour": "teal", "MODE": "fast"}},
}


def pod(*containers: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "rec", "tier": "x"},
            "annotations": {"a/b": "c"},
        },
        "spec": {"nodeName": "n1", "containers": list(containers), "volumes": volumes or []},
    }


def env_of(
    c: dict[str, Any],
    p: dict[str, Any] | None = None,
    secrets: Objects = SECRETS,
    configmaps: Objects = CONFIGMAPS,
) -> dict[str, str]:
    return container_env(
        p or pod(c),
        c,
        {"PATH": "/bin", "HOME": str(POD_DIR)},
        pod_dir=POD_DIR,
        secrets=secrets,
        configmaps=configmaps,
        capacity=CAPACITY,
    )


def var(name: str, **how: Any) -> dict[str, Any]:
    return {"name": name, **how}


def test_plain_values_expand_earlier_variables_and_keep_the_base() -> None:
    c = {"name": "c", "env": [var("A", value="1"), var("B", value="$(A)-$(HOME)-$(NOPE)"),
                              var("EMPTY")]}  # fmt: skip
    env = env_of(c)
    assert env["A"] == "1"
    assert env["B"] == f"1-{POD_DIR}-$(NOPE)"
    assert env["EMPTY"] == ""
    assert env["PATH"] == "/bin"
    assert env["TMPDIR"] == str(POD_DIR / "tmp")
    assert env[TERMINATION_ENV] == str(POD_DIR / "termination" / "c")
    assert termination_log(POD_DIR, "c") == POD_DIR / "termination" / "c"


def test_field_refs_of_metadata_and_status() -> None:
    def fr(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    c = {"name": "c", "env": [
        var("NAME", **fr("metadata.name")), var("NS", **fr("metadata.namespace")),
        var("UID", **fr("metadata.uid")), var("APP", **fr("metadata.labels['app']")),
        var("LABELS", **fr("metadata.labels")), var("IP", **fr("status.podIP")),
        var("NODE", **fr("spec.nodeName")), var("SA", **fr("spec.serviceAccountName")),
    ]}  # fmt: skip
    env = env_of(c)
    assert (env["NAME"], env["NS"], env["UID"], env["APP"]) == ("p", "ns", "u-1", "rec")
    assert env["LABELS"] == 'app="rec"\ntier="x"'
    assert env["IP"] == pod_ip(pod(c)) != "127.0.0.1"
    assert env["NODE"] == "n1"
    assert env["SA"] == "default"
    assert field_value(pod(c), "metadata.annotations['a/b']") == "c"
    bad = {"name": "c", "env": [var("X", **fr("status.phase"))]}
    with pytest.raises(ConfigError, match=r"unsupported fieldRef.fieldPath 'status.phase'"):
        env_of(bad)


def test_resource_field_refs_round_up_and_fall_back_to_capacity() -> None:
    def rf(resource: str, divisor: str = "1") -> dict[str, Any]:
        return {"valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": divisor}}}

    c = {
        "name": "c",
        "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "250m"}},
        "env": [
            var("CPU", **rf("limits.cpu")),
            var("MILLI", **rf("requests.cpu", "1m")),
            var("MEM_MI", **rf("limits.memory", "1Mi")),
            var("NODE_MEM_GI", **rf("requests.memory", "1Gi")),  # unset: node capacity
        ],
    }
    env = env_of(c)
    assert env["CPU"] == "1"  # 0.5 core rounds up
    assert env["MILLI"] == "250"
    assert env["MEM_MI"] == "1024"
    assert env["NODE_MEM_GI"] == "8"


def test_secret_and_configmap_key_refs() -> None:
    def ref(kind: str, name: str, key: str, optional: bool | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name, "key": key}
        if optional is not None:
            r["optional"] = optional
        return {"valueFrom": {kind: r}}

    c = {"name": "c", "env": [
        var("PW", **ref("secretKeyRef", "creds", "pw")),
        var("COLOUR", **ref("configMapKeyRef", "cfg", "colour")),
        var("MAYBE", **ref("secretKeyRef", "gone", "x", optional=True)),
        var("MAYBE_KEY", **ref("configMapKeyRef", "cfg", "nope", optional=True)),
        var("LINE", value="$(PW)/$(COLOUR)/$(MAYBE)"),
    ]}  # fmt: skip
    env = env_of(c)
    assert env["PW"] == "hunter2"
    assert env["COLOUR"] == "teal"
    assert "MAYBE" not in env and "MAYBE_KEY" not in env  # optional and missing: not set
    assert env["LINE"] == "hunter2/teal/$(MAYBE)"
    assert env_refs(c).secrets == {"creds", "gone"}
    assert env_refs(c).configmaps == {"cfg"}

    missing_secret = {"name": "c", "env": [var("X", **ref("secretKeyRef", "gone", "pw"))]}
    with pytest.raises(ConfigError, match='secret "gone" not found'):
        env_of(missing_secret)
    missing_key = {"name": "c", "env": [var("X", **ref("secretKeyRef", "creds", "nope"))]}
    with pytest.raises(ConfigError, match="couldn't find key nope in Secret ns/creds"):
        env_of(missing_key)
    missing_cm = {"name": "c", "env": [var("X", **ref("configMapKeyRef", "absent", "k"))]}
    with pytest.raises(ConfigError, match='configmap "absent" not found'):
        env_of(missing_cm)
    unknown = {"name": "c", "env": [var("X", valueFrom={"fileKeyRef": {}})]}
    with pytest.raises(ConfigError, match=r"unsupported valueFrom \['fileKeyRef'\]"):
        env_of(unknown)


def test_env_from_with_prefixes_and_env_winning_over_it() -> None:
    c = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
            {"secretRef": {"name": "gone", "optional": True}},
        ],
        "env": [var("user", value="override")],
    }
    env = env_of(c)
    assert env["CFG_colour"] == "teal" and env["CFG_MODE"] == "fast"
    assert env["pw"] == "hunter2"
    assert env["user"] == "override"
    with pytest.raises(ConfigError, match='secret "gone" not found'):
        env_of({"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]})


def test_tmpdir_is_the_empty_dir_at_tmp_else_the_first_empty_dir() -> None:
    vols = [{"name": "scratch", "emptyDir": {}}, {"name": "work", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}}]  # fmt: skip
    at_tmp = {"name": "c", "volumeMounts": [
        {"name": "scratch", "mountPath": "/scratch"}, {"name": "work", "mountPath": "/tmp/"}]}
    first = {"name": "c", "volumeMounts": [
        {"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "work", "mountPath": "/data"}]}
    none = {"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}
    assert tmpdir(pod(at_tmp, volumes=vols), at_tmp, POD_DIR) == POD_DIR / "volumes" / "work"
    assert tmpdir(pod(first, volumes=vols), first, POD_DIR) == POD_DIR / "volumes" / "work"
    assert tmpdir(pod(none, volumes=vols), none, POD_DIR) == POD_DIR / "tmp"
    assert env_of(at_tmp, pod(at_tmp, volumes=vols))["TMPDIR"] == str(POD_DIR / "volumes/work")


def test_each_pod_gets_its_own_loopback_address_and_host_network_pods_the_nodes() -> None:
    """Replicas of one Deployment bind their pod IP, so the addresses must differ between
    pods, stay the same for one pod (an agent restart), lie in 127.0.0.0/8 (routed to
    loopback) and be bindable; a hostNetwork pod has the node's address."""
    pods = [{"metadata": {"uid": f"uid-{i}"}, "spec": {}} for i in range(200)]
    ips = [pod_ip(p) for p in pods]
    assert len(set(ips)) == len(ips)
    assert ips == [pod_ip(p) for p in pods]
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        assert addr in ipaddress.ip_network("127.64.0.0/10") and ip.split(".")[3] not in (
            "0", "255")
    assert pod_ip({"metadata": {"uid": "x"}, "spec": {"hostNetwork": True}}) == "127.0.0.1"
    a, b = socket.socket(), socket.socket()
    try:  # two pods bind the same port, each on its own address
        a.bind((ips[0], 0))
        port = a.getsockname()[1]
        b.bind((ips[1], port))
    finally:
        a.close()
        b.close()
