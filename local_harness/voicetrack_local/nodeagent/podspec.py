"""Pure functions that turn a pod spec into what a container process gets: its environment
(``value`` with ``$(VAR)`` expansion, ``envFrom``, ``valueFrom`` fieldRef / resourceFieldRef /
secretKeyRef / configMapKeyRef), its TMPDIR and its termination-message file.

Nothing here calls the API or touches the disk: the worker fetches the Secrets and
ConfigMaps that :func:`env_refs` names and passes them in.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the kubelet's default ``terminationMessagePath``
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: env var holding the host path of the container's termination-message file
TERMINATION_ENV = "VOICETRACK_TERMINATION_LOG"

#: fetched objects by name; a name mapped to None (or absent) does not exist
Objects = Mapping[str, "dict[str, Any] | None"]


class ConfigError(Exception):
    """A pod cannot be started as specified (missing Secret, key, bad field path …); the
    message becomes the waiting reason's message, as the kubelet's CreateContainerConfigError."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$(NAME)`` → env value when defined (left as is
    otherwise), ``$$`` → ``$`` (kubernetes.io/docs/tasks/inject-data-application/
    define-interdependent-environment-variables/)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


_SUFFIX = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def quantity(q: str | int | float) -> float:
    """Parse a Kubernetes resource quantity (``"500m"``, ``"1Gi"``, ``"2"``, ``"1e3"``).

    Raises:
        ConfigError: not a quantity."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ConfigError(f"invalid resource quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


NODE_IP = "127.0.0.1"
"""The local node's address (``InternalIP``, every pod's ``hostIP``)."""


def uid_ip(uid: str) -> str:
    """The first-choice pod IP of the pod with ``uid``: a loopback address in
    127.64.0.0/10 from a hash of the uid, never ending in .0 or .255 (which tools read as
    special; .1 and .252 are therefore twice as likely as the others).  Two pods' first
    choices coincide with probability about n**2 / 2**23 (n: the pods of every node agent
    on this host, which share one loopback interface); the agent then gives the second the
    next free address (:class:`~.podips.PodIPs`)."""
    digest = hashlib.sha256(uid.encode()).digest()
    n = int.from_bytes(digest[:3], "big") & 0x3FFFFF
    if n & 0xFF in (0, 255):  # keep clear of .0 and .255, which tools read as special
        n ^= 1 if n & 0xFF == 0 else 3
    return f"127.{64 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def pod_ip(pod: Mapping[str, Any]) -> str:
    """The address of ``pod``: the node's own (127.0.0.1) for a ``hostNetwork`` pod, else
    its ``status.podIP`` (the worker hands its functions a pod carrying the address the
    agent assigned, :class:`~.podips.PodIPs`), else its uid's first choice (:func:`uid_ip`).

    Every local pod shares the host's network namespace, but Linux routes all of
    127.0.0.0/8 to the loopback interface: a process that binds its pod IP (a Deployment's
    replicas told ``$(POD_IP)`` through the downward API) does not clash with its sibling
    replicas on the same ports, as pods with their own network namespaces would not. A
    process binding 0.0.0.0 is still reachable at its pod IP."""
    if (pod.get("spec") or {}).get("hostNetwork"):
        return NODE_IP
    reported = (pod.get("status") or {}).get("podIP")
    if reported:
        return str(reported)
    return uid_ip(str(pod["metadata"].get("uid", "")))


def field_value(pod: dict[str, Any], path: str) -> str:
    """Value of a downward-API ``fieldPath`` of ``pod`` (the host address is 127.0.0.1,
    where every local pod runs; the pod's own is :func:`pod_ip`'s: its ``status.podIP``).

    Raises:
        ConfigError: a field path the agent does not support."""
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": NODE_IP,
        "status.hostIPs": NODE_IP,
        "status.podIP": pod_ip(pod),
        "status.podIPs": pod_ip(pod),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"unsupported fieldRef.fieldPath {path!r}")


@dataclass
class Refs:
    """Names of the Secrets and ConfigMaps a container's env or a pod's volumes read."""

    secrets: set[str] = field(default_factory=set)
    configmaps: set[str] = field(default_factory=set)


def env_refs(container: dict[str, Any]) -> Refs:
    """The Secrets and ConfigMaps that ``container``'s ``envFrom`` and ``env`` read."""
    refs = Refs()
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            refs.configmaps.add(src["configMapRef"]["name"])
        elif "secretRef" in src:
            refs.secrets.add(src["secretRef"]["name"])
    for var in container.get("env") or []:
        vf = var.get("valueFrom") or {}
        if "value" in var:
            continue
        if "secretKeyRef" in vf:
            refs.secrets.add(vf["secretKeyRef"]["name"])
        elif "configMapKeyRef" in vf:
            refs.configmaps.add(vf["configMapKeyRef"]["name"])
    return refs


def service_env(host: str, port: int) -> dict[str, str]:
    """The variables of the ``kubernetes`` Service every container gets (with
    ``enableServiceLinks`` or not), pointing at the API server at ``host:port``:
    ``KUBERNETES_SERVICE_HOST`` and ``KUBERNETES_SERVICE_PORT`` are what in-cluster clients
    read (client-go ``rest.InClusterConfig``; kubernetes.io/docs/tasks/run-application/
    access-api-from-pod/); the docker-link style ones follow them."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def termination_log(pod_dir: Path, container: str) -> Path:
    """Host file standing for container ``container``'s ``terminationMessagePath``.

    A pod's processes share the host file system, so the path the container declares
    (default ``/dev/termination-log``, not writable by a user) is never written as is: each
    container gets ``<pod dir>/termination/<container>``, named in its env as
    :data:`TERMINATION_ENV`."""
    return pod_dir / "termination" / container


def tmpdir(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> Path:
    """TMPDIR of ``container``: the emptyDir it mounts at ``/tmp``, else the first emptyDir
    it mounts, else the pod's ``tmp/``."""
    mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
    vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    empties = [n for n, m in mounts.items() if "emptyDir" in vols.get(n, {})]
    at_tmp = [n for n in empties if mounts[n]["mountPath"].rstrip("/") == "/tmp"]
    if at_tmp or empties:
        return pod_dir / "volumes" / (at_tmp or empties)[0]
    return pod_dir / "tmp"


def resource_value(
    ref: dict[str, Any], container: dict[str, Any], capacity: Mapping[str, str]
) -> str:
    """Value of a ``resourceFieldRef`` (e.g. ``limits.cpu`` with ``divisor``), rounded up
    as the kubelet does; an unset limit or request falls back to the node's ``capacity``.

    Raises:
        ConfigError: a quantity cannot be parsed."""
    kind, _, what = ref["resource"].partition(".")
    raw = ((container.get("resources") or {}).get(kind) or {}).get(what)
    if raw is None:  # the kubelet falls back to node allocatable for unset limits
        raw = capacity.get(what, "0")
    divisor = quantity(ref.get("divisor", "1"))
    return str(math.ceil(quantity(raw) / divisor))


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    base: Mapping[str, str],
    *,
    pod_dir: Path,
    secrets: Objects,
    configmaps: Objects,
    capacity: Mapping[str, str],
    host_paths: bool = True,
) -> dict[str, str]:
    """Environment of ``container`` (a pod spec container dict) of ``pod``: ``base``, then
    TMPDIR (:func:`tmpdir`) and :data:`TERMINATION_ENV` (only with ``host_paths``: a
    process on this host; a container in its image has its own file system), then
    ``envFrom``, then ``env`` (later wins), with ``$(VAR)`` expansion of values.

    Args:
        base: the pod-wide variables (PATH, HOME, KUBECONFIG …).
        pod_dir: the pod's private directory on this host.
        secrets, configmaps: the objects :func:`env_refs` names, fetched (None: missing).
        capacity: node capacity, for ``resourceFieldRef`` of unset limits.

    Raises:
        ConfigError: a missing Secret, ConfigMap or key that is not ``optional``, an
            unsupported field path or ``valueFrom``, a bad quantity."""
    env = dict(base)
    if host_paths:
        env["TMPDIR"] = str(tmpdir(pod, container, pod_dir))
        env[TERMINATION_ENV] = str(termination_log(pod_dir, container["name"]))
    ns = pod["metadata"].get("namespace", "")
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            obj = configmaps.get(ref["name"])
            if obj is None and not ref.get("optional"):
                raise ConfigError(f'configmap "{ref["name"]}" not found')
            for k, v in ((obj or {}).get("data") or {}).items():
                env[prefix + k] = v
        elif "secretRef" in src:
            ref = src["secretRef"]
            obj = secrets.get(ref["name"])
            if obj is None and not ref.get("optional"):
                raise ConfigError(f'secret "{ref["name"]}" not found')
            for k, v in ((obj or {}).get("data") or {}).items():
                env[prefix + k] = base64.b64decode(v).decode(errors="replace")
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        vf = var["valueFrom"]
        if "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind = "secret" if "secretKeyRef" in vf else "configmap"
            ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
            obj = (secrets if kind == "secret" else configmaps).get(ref["name"])
            data = (obj or {}).get("data") or {}
            if obj is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                if obj is None:
                    raise ConfigError(f'{kind} "{ref["name"]}" not found')
                raise ConfigError(
                    f"couldn't find key {ref['key']} in {kind.capitalize()} {ns}/{ref['name']}"
                )
            raw = data[ref["key"]]
            env[name] = base64.b64decode(raw).decode(errors="replace") if kind == "secret" else raw
        elif "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(vf["resourceFieldRef"], container, capacity)
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(vf)}")
    return env
