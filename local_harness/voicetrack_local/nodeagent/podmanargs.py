"""Pure builders for the podman runtime: which local image a pod's ``image`` names, what
its ``imagePullPolicy`` asks, the effective security context, and the ``podman run``
arguments that run one container of a pod (see :mod:`.podman` for the side that runs them).

No clock, no API, no disk and no podman call: what podman knows (the image's configured
user) comes in as an argument.

Kubernetes facts used here, with their sources:

* ``command`` replaces the image's ENTRYPOINT and ``args`` its CMD; a ``command`` without
  ``args`` drops the CMD (API reference, Container; kubernetes.io/docs/tasks/inject-data-
  application/define-command-argument-container/).
* ``imagePullPolicy`` defaults to ``Always`` for ``:latest`` or no tag, else
  ``IfNotPresent`` (kubernetes.io/docs/concepts/containers/images/#imagepullpolicy-defaulting).
* The container's ``securityContext`` overrides the pod's for ``runAsUser``,
  ``runAsGroup``, ``runAsNonRoot``, ``seLinuxOptions``, ``seccompProfile`` (API reference,
  PodSecurityContext); ``runAsNonRoot`` refuses a root user and a non-numeric image user
  (the kubelet's ``verifyRunAsNonRoot``, pkg/kubelet/kuberuntime/security_context_others.go).
* Secret, configMap, downwardAPI and projected volumes are mounted read-only (kubelet,
  since CVE-2017-1002102); ``emptyDir.sizeLimit`` bounds the volume (API reference,
  EmptyDirVolumeSource).
* CPU requests become cgroup shares (``milliCPU * 1024 / 1000``, at least 2) and CPU limits
  a CFS quota; the memory limit is the cgroup's hard limit, swap off (kubelet
  pkg/kubelet/cm/helpers_linux.go ``MilliCPUToShares``, ``ResourceConfigForPod``).
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetrack_local.nodeagent.podspec import (
    DEFAULT_TERMINATION_PATH,
    ConfigError,
    expand,
    quantity,
)

#: label on every container the agent starts (value: the agent's instance id)
AGENT_LABEL = "dev.voicetrack.node-agent"
#: variables podman itself reads; passed to the container as ``--env K=V``, never through
#: podman's own environment
PODMAN_OWN_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "CONTAINERS_CONF", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
     "XDG_DATA_HOME", "LANG", "LC_ALL", "TZ", "USER", "SHELL"}
)  # fmt: skip

#: volume kinds the kubelet always mounts read-only
READ_ONLY_KINDS = ("secret", "configMap", "downwardAPI", "projected")


def split_image(image: str) -> tuple[str, str, str]:
    """``(registry, repository path, tag or @digest)`` of an image reference; the registry
    is ``""`` when the first path component is not a host (no ``.`` or ``:``, not
    ``localhost``), the tag ``""`` when there is none."""
    ref = image
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        digest = "@" + digest
    first, _, rest = ref.partition("/")
    registry = ""
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, ref = first, rest
    tag = ""
    name, sep, maybe_tag = ref.rpartition(":")
    if sep and "/" not in maybe_tag:
        ref, tag = name, maybe_tag
    return registry, ref, digest or tag


def image_candidates(image: str) -> list[str]:
    """Full names ``image`` may stand for in local podman storage, best first: as written
    when it names a registry; else ``localhost/<name>`` (what ``make images`` builds), then
    Docker Hub's ``docker.io/[library/]<name>``.  A missing tag is ``latest``.

    Raises:
        ConfigError: an empty image name (the kubelet's ``InvalidImageName``)."""
    if not image.strip():
        raise ConfigError("empty image name")
    registry, path, tag = split_image(image.strip())
    suffix = tag if tag.startswith("@") else f":{tag or 'latest'}"
    if registry:
        return [f"{registry}/{path}{suffix}"]
    hub = path if "/" in path else f"library/{path}"
    return [f"localhost/{path}{suffix}", f"docker.io/{hub}{suffix}"]


def pull_policy(container: Mapping[str, Any]) -> str:
    """The container's ``imagePullPolicy``, defaulted as the API server does: ``Always``
    for a ``:latest`` tag or none, else ``IfNotPresent``."""
    given = container.get("imagePullPolicy")
    if given:
        return str(given)
    _, _, tag = split_image(str(container.get("image") or ""))
    return "Always" if tag in ("", "latest") else "IfNotPresent"


@dataclass(frozen=True)
class Security:
    """A container's effective security context (pod-level values overridden by the
    container's)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    read_only_root: bool = False
    privileged: bool = False
    no_new_privileges: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    seccomp_unconfined: bool = False


def effective_security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> Security:
    """Merge the pod's ``securityContext`` and the container's (the container's wins)."""
    psc = pod["spec"].get("securityContext") or {}
    csc = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc[key] if csc.get(key) is not None else psc.get(key)

    caps = csc.get("capabilities") or {}
    groups = [*(psc.get("supplementalGroups") or [])]
    if psc.get("fsGroup") is not None:
        groups.append(psc["fsGroup"])
    seccomp = (pick("seccompProfile") or {}).get("type")
    ape = csc.get("allowPrivilegeEscalation")
    return Security(
        run_as_user=None if pick("runAsUser") is None else int(pick("runAsUser")),
        run_as_group=None if pick("runAsGroup") is None else int(pick("runAsGroup")),
        run_as_non_root=bool(pick("runAsNonRoot")),
        read_only_root=bool(csc.get("readOnlyRootFilesystem")),
        privileged=bool(csc.get("privileged")),
        no_new_privileges=ape is False,
        cap_add=tuple(str(c) for c in caps.get("add") or []),
        cap_drop=tuple(str(c) for c in caps.get("drop") or []),
        groups=tuple(int(g) for g in groups),
        seccomp_unconfined=seccomp == "Unconfined",
    )


def check_non_root(sec: Security, image_user: str, pod_name: str, ctr: str) -> None:
    """The kubelet's ``verifyRunAsNonRoot``: with ``runAsNonRoot``, refuse a container that
    would run as uid 0 (``runAsUser: 0``, or no ``runAsUser`` and an image user that is
    empty, ``root`` or ``0``) or whose image user is a name it cannot check.

    Args:
        image_user: the image's configured ``User`` (``uid[:gid]`` or a name, "" = root).

    Raises:
        ConfigError: the kubelet's messages (CreateContainerConfigError)."""
    if not sec.run_as_non_root:
        return
    if sec.run_as_user is not None:
        if sec.run_as_user == 0:
            raise ConfigError(
                f"container's runAsUser breaks non-root policy (pod: {pod_name!r}, "
                f"container: {ctr})"
            )
        return
    user = image_user.split(":", 1)[0]
    if user in ("", "0", "root"):
        raise ConfigError(
            f"container has runAsNonRoot and image will run as root (pod: {pod_name!r}, "
            f"container: {ctr})"
        )
    if not user.isdigit():
        raise ConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({user}), cannot "
            f"verify user is non-root (pod: {pod_name!r}, container: {ctr})"
        )


def _user_arg(sec: Security, image_user: str) -> str | None:
    if sec.run_as_user is None and sec.run_as_group is None:
        return None
    user = str(sec.run_as_user) if sec.run_as_user is not None else (
        image_user.split(":", 1)[0] or "0"
    )
    if sec.run_as_group is not None:
        return f"{user}:{sec.run_as_group}"
    return user


def security_args(sec: Security, image_user: str) -> list[str]:
    """``podman run`` options for ``sec`` (``image_user``: the image's ``User``)."""
    args: list[str] = []
    user = _user_arg(sec, image_user)
    if user is not None:
        args += ["--user", user]
    for g in sec.groups:
        args += ["--group-add", str(g)]
    if sec.read_only_root:
        # podman would add tmpfs at /tmp, /var/tmp and /run; Kubernetes does not
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sec.privileged:
        args.append("--privileged")
    for c in sec.cap_drop:
        args += ["--cap-drop", c]
    for c in sec.cap_add:
        args += ["--cap-add", c]
    if sec.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    if sec.seccomp_unconfined:
        args += ["--security-opt", "seccomp=unconfined"]
    return args


def resource_args(container: Mapping[str, Any]) -> list[str]:
    """cgroup options for ``resources``: ``limits.memory`` → ``--memory`` with swap off,
    ``limits.cpu`` → ``--cpus`` (CFS quota), ``requests.cpu`` → ``--cpu-shares``.  All
    three apply under cgroup v1 (this machine) and v2; ``ephemeral-storage`` and extended
    resources are not enforced.

    Raises:
        ConfigError: a quantity that does not parse."""
    res = container.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    args: list[str] = []
    if "memory" in limits:
        mem = str(math.ceil(quantity(limits["memory"])))
        args += ["--memory", mem, "--memory-swap", mem]
    if "cpu" in limits:
        args += ["--cpus", f"{quantity(limits['cpu']):g}"]
    cpu_req = requests.get("cpu", limits.get("cpu"))
    if cpu_req is not None:
        args += ["--cpu-shares", str(max(2, int(quantity(cpu_req) * 1000) * 1024 // 1000))]
    return args


def _mounters(pod: Mapping[str, Any], volume: str) -> int:
    ctrs = (pod["spec"].get("initContainers") or []) + (pod["spec"].get("containers") or [])
    return sum(any(m["name"] == volume for m in c.get("volumeMounts") or []) for c in ctrs)


def mount_args(pod: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path) -> list[str]:
    """``--mount`` options for the container's ``volumeMounts``: a bind mount of the pod's
    ``volumes/<name>[/subPath]`` (read-only for secret, configMap, downwardAPI and projected
    volumes and where ``readOnly``), except an emptyDir with a ``sizeLimit`` or
    ``medium: Memory`` that only this container mounts: a tmpfs of that size (a size limit
    the kernel enforces; shared emptyDirs stay host directories, unbounded).

    Raises:
        ConfigError: a mount of an undeclared volume, or a ``subPath`` leaving its volume."""
    vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    args: list[str] = []
    for m in container.get("volumeMounts") or []:
        name, dest = m["name"], m["mountPath"]
        vol = vols.get(name)
        if vol is None:
            raise ConfigError(f"volumeMount {name!r}: no volume of that name in the pod")
        sub = posixpath.normpath(m.get("subPath") or ".")
        if sub.startswith("/") or sub == ".." or sub.startswith("../"):
            raise ConfigError(f"volume {name!r}: subPath {sub!r} leaves the volume")
        empty = vol.get("emptyDir")
        if empty is not None and sub == "." and _mounters(pod, name) == 1 and (
            empty.get("sizeLimit") or empty.get("medium") == "Memory"
        ):
            opts = f"type=tmpfs,destination={dest},tmpfs-mode=1777"
            if empty.get("sizeLimit"):
                opts += f",tmpfs-size={math.ceil(quantity(empty['sizeLimit']))}"
            args += ["--mount", opts]
            continue
        source = pod_dir / "volumes" / name
        if sub != ".":
            source = source / sub
        ro = bool(m.get("readOnly")) or any(k in vol for k in READ_ONLY_KINDS) or bool(
            (vol.get("persistentVolumeClaim") or {}).get("readOnly")
        )
        for part in (str(source), dest):
            if "," in part:
                raise ConfigError(f"volume {name!r}: a path with ',' cannot be mounted: {part}")
        args += ["--mount", f"type=bind,source={source},destination={dest}" + (",ro" if ro else "")]
    return args


def command_args(
    container: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """``(options, trailing args)``: ``--entrypoint`` (JSON) from ``command``, and ``args``,
    both with ``$(VAR)`` expansion against ``env``; a ``command`` without ``args`` passes no
    trailing arguments, so the image's CMD is dropped as in Kubernetes."""
    opts: list[str] = []
    command = [expand(str(x), dict(env)) for x in container.get("command") or []]
    args = [expand(str(x), dict(env)) for x in container.get("args") or []]
    if command:
        opts += ["--entrypoint", json.dumps(command)]
    return opts, args


def env_args(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """``(--env options, podman's extra environment)``: each variable is passed by name
    (``--env K``, its value read from podman's environment, so values, Secrets among them,
    never appear on a command line), except :data:`PODMAN_OWN_ENV` names and names podman
    cannot pass that way, which go as ``--env K=V``."""
    opts: list[str] = []
    through: dict[str, str] = {}
    for k, v in env.items():
        if k in PODMAN_OWN_ENV or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            opts += ["--env", f"{k}={v}"]
        else:
            opts += ["--env", k]
            through[k] = v
    return opts, through


def container_name(pod: Mapping[str, Any], container: str, restart: int) -> str:
    """The podman name of run ``restart`` of ``container``: ``k8s_<container>_<pod>_<ns>_
    <uid>_<restart>``, the dockershim's pattern (unique per run)."""
    meta = pod["metadata"]
    return f"k8s_{container}_{meta['name']}_{meta['namespace']}_{meta['uid']}_{restart}"


def podman_run_args(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    image: str,
    image_user: str,
    env: Mapping[str, str],
    pod_dir: Path,
    termination_file: Path,
    name: str,
    agent_id: str,
    extra_labels: Iterable[tuple[str, str]] = (),
) -> tuple[list[str], dict[str, str]]:
    """The ``podman run`` command (without ``podman`` itself) that runs ``container`` of
    ``pod`` in the foreground, and the variables to add to podman's own environment (see
    :func:`env_args`).

    The container shares the host's network (``--network host``: the API server is
    reachable at 127.0.0.1, and the pod's own IP, ``podspec.pod_ip``, is a loopback
    address), has the pod's ``hostname``, its volume mounts (:func:`mount_args`), its
    termination-message file bind-mounted at ``terminationMessagePath``, its security
    context (:func:`security_args`) and resources (:func:`resource_args`); podman keeps no
    log (the agent writes the attached output to the pod's log files).  The container is
    kept after it exits, so the agent can tell a start failure from an exit, then removes
    it.

    Args:
        image: the full local image name (:func:`image_candidates`, resolved).
        image_user: the image's configured ``User``.
        env: the container's environment (:func:`~.podspec.container_env`).
        termination_file: the host file standing for ``terminationMessagePath``.
        name: the podman container name (:func:`container_name`).
        agent_id: the value of :data:`AGENT_LABEL`, to find this agent's containers.

    Raises:
        ConfigError: ``runAsNonRoot`` refused (:func:`check_non_root`), a bad mount or
            quantity."""
    meta, spec = pod["metadata"], pod["spec"]
    sec = effective_security(pod, container)
    check_non_root(sec, image_user, str(meta["name"]), str(container["name"]))
    hostname = str(spec.get("hostname") or meta["name"])[:63]
    args = ["run", "--name", name, "--pull", "never", "--network", "host",
            "--hostname", hostname, "--log-driver", "none", "--stop-timeout", "0",
            "--label", f"{AGENT_LABEL}={agent_id}",
            "--label", f"io.kubernetes.pod.namespace={meta['namespace']}",
            "--label", f"io.kubernetes.pod.name={meta['name']}",
            "--label", f"io.kubernetes.pod.uid={meta['uid']}",
            "--label", f"io.kubernetes.container.name={container['name']}"]  # fmt: skip
    for k, v in extra_labels:
        args += ["--label", f"{k}={v}"]
    if container.get("workingDir"):
        args += ["--workdir", str(container["workingDir"])]
    args += security_args(sec, image_user)
    args += resource_args(container)
    args += mount_args(pod, container, pod_dir)
    tpath = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)
    args += ["--mount", f"type=bind,source={termination_file},destination={tpath}"]
    opts, through = env_args(env)
    args += opts
    entry, trailing = command_args(container, env)
    args += entry
    args.append(image)
    args += trailing
    return args, through
