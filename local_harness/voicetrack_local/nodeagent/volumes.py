"""What a pod's volumes hold on this host: :func:`plan_volumes` (pure) decides every
directory and file, :func:`write_volumes` puts the plan on disk under the pod's
``volumes/`` directory (``volumes/<name>/…``).

Supported: emptyDir (an empty private directory), secret, configMap, downwardAPI (fieldRef
items), projected (serviceAccountToken, secret, configMap, downwardAPI) and
persistentVolumeClaim.  File modes follow ``defaultMode`` (0644 unless set) and each item's
``mode``.

A persistentVolumeClaim volume is the directory of the PersistentVolume the claim is bound
to (``hostPath.path`` or ``local.path``; the PV controller of kube-controller-manager does
the binding): ``volumes/<name>`` becomes a symlink to it, created first when missing with
``DirectoryOrCreate`` semantics (a hostPath of type ``""`` or ``DirectoryOrCreate``).  The
pod's processes share this host's file system, so a container mounting such a volume runs
in its own mount namespace where the directory is bind-mounted at its ``mountPath``
(read-only when the mount or the claim volume says ``readOnly``): :func:`mount_prefix`.
"""

from __future__ import annotations

import base64
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetrack_local.nodeagent.podspec import ConfigError, Objects, Refs, field_value

DEFAULT_MODE = 0o644


@dataclass(frozen=True)
class VolumeFile:
    """One file to write: ``path`` relative to the pod's ``volumes/`` directory
    (``<volume>/<item path>``), its bytes and its permission bits."""

    path: str
    data: bytes
    mode: int = DEFAULT_MODE


@dataclass(frozen=True)
class VolumeLink:
    """A volume that is a host directory (a bound PersistentVolume): ``volumes/<name>`` links
    to ``target``, which is created when missing if ``create``."""

    name: str
    target: str
    create: bool
    read_only: bool = False


@dataclass
class VolumePlan:
    """Every volume's directory (relative to ``volumes/``), the files inside them and the
    volumes that link to host directories."""

    dirs: list[str] = field(default_factory=list)
    files: list[VolumeFile] = field(default_factory=list)
    links: list[VolumeLink] = field(default_factory=list)


def claim_names(pod: dict[str, Any]) -> set[str]:
    """The PersistentVolumeClaims ``pod``'s volumes use."""
    return {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"].get("volumes") or []
        if "persistentVolumeClaim" in v
    }


def _claim_link(vol: dict[str, Any], ns: str, pvcs: Objects, pvs: Objects) -> VolumeLink:
    src = vol["persistentVolumeClaim"]
    claim = src["claimName"]
    pvc = pvcs.get(claim)
    if pvc is None:
        raise ConfigError(f'persistentvolumeclaim "{claim}" not found')
    pv_name = (pvc.get("spec") or {}).get("volumeName")
    if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
        raise ConfigError(f'persistentvolumeclaim "{claim}" is not bound')
    pv = pvs.get(pv_name)
    if pv is None:
        raise ConfigError(f'persistentvolume "{pv_name}" not found (claim {ns}/{claim})')
    pv_spec = pv.get("spec") or {}
    ref = pv_spec.get("claimRef") or {}
    if (ref.get("namespace"), ref.get("name")) != (ns, claim):
        raise ConfigError(f'persistentvolume "{pv_name}" is not bound to claim {ns}/{claim}')
    if "hostPath" in pv_spec:
        path = pv_spec["hostPath"]["path"]
        create = pv_spec["hostPath"].get("type", "") in ("", "DirectoryOrCreate")
    elif "local" in pv_spec:
        path, create = pv_spec["local"]["path"], False
    else:
        raise ConfigError(
            f'persistentvolume "{pv_name}": only hostPath and local volumes are supported'
        )
    if not posixpath.isabs(path):
        raise ConfigError(f'persistentvolume "{pv_name}": path {path!r} is not absolute')
    return VolumeLink(vol["name"], posixpath.normpath(path), create, bool(src.get("readOnly")))


def volume_refs(pod: dict[str, Any]) -> Refs:
    """The Secrets and ConfigMaps that ``pod``'s volumes (projected ones included) read."""
    refs = Refs()

    def add(src: dict[str, Any], secret: bool) -> None:
        name = src.get("name") or src.get("secretName")
        if name:
            (refs.secrets if secret else refs.configmaps).add(name)

    for vol in pod["spec"].get("volumes") or []:
        if "secret" in vol:
            add(vol["secret"], True)
        elif "configMap" in vol:
            add(vol["configMap"], False)
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                add(src["secret"], True)
            elif "configMap" in src:
                add(src["configMap"], False)
    return refs


def _object_data(kind: str, obj: dict[str, Any]) -> dict[str, bytes]:
    if kind == "secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _map_files(
    vol: str, kind: str, src: dict[str, Any], objects: Objects, ns: str, default_mode: int
) -> list[VolumeFile]:
    name = src.get("name") or src.get("secretName") or ""
    obj = objects.get(name)
    if obj is None:
        if src.get("optional"):
            return []
        raise ConfigError(f'{kind} "{name}" not found (volume {vol!r})')
    data = _object_data(kind, obj)
    mode = int(src.get("defaultMode", default_mode))
    items = src.get("items")
    pairs = (
        [(i["key"], i["path"], int(i.get("mode", mode))) for i in items]
        if items
        else [(k, k, mode) for k in data]
    )
    out = []
    for key, rel, m in pairs:
        if key not in data:
            if src.get("optional"):
                continue
            raise ConfigError(f"couldn't find key {key} in {kind} {ns}/{name}")
        out.append(VolumeFile(posixpath.join(vol, rel), data[key], m))
    return out


def _downward_files(
    vol: str, src: dict[str, Any], pod: dict[str, Any], default_mode: int
) -> list[VolumeFile]:
    mode = int(src.get("defaultMode", default_mode))
    return [
        VolumeFile(
            posixpath.join(vol, item["path"]),
            field_value(pod, item["fieldRef"]["fieldPath"]).encode(),
            int(item.get("mode", mode)),
        )
        for item in src.get("items") or []
        if "fieldRef" in item
    ]


def plan_volumes(
    pod: dict[str, Any],
    token: str | None,
    secrets: Objects,
    configmaps: Objects,
    pvcs: Objects | None = None,
    pvs: Objects | None = None,
) -> VolumePlan:
    """What to materialise for ``pod``'s volumes.

    Args:
        token: the pod's ServiceAccount token (projected ``serviceAccountToken`` sources),
            or None when it is not mounted (those sources are then left out).
        secrets, configmaps: the objects :func:`volume_refs` names, fetched (None: missing).
        pvcs: the claims :func:`claim_names` names; pvs: the PersistentVolumes they are
            bound to, by name (None: missing).

    Returns:
        one directory per volume (an emptyDir is just that) and the files of the others; a
        link per persistentVolumeClaim volume.

    Raises:
        ConfigError: a missing Secret, ConfigMap or key that is not ``optional``, an
            unsupported downward-API field; a claim that is missing or not bound yet (the
            kubelet too waits for it), or bound to a volume that is neither hostPath nor
            local."""
    ns = pod["metadata"].get("namespace", "")
    plan = VolumePlan()
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        if "persistentVolumeClaim" in vol:
            plan.links.append(_claim_link(vol, ns, pvcs or {}, pvs or {}))
            continue
        plan.dirs.append(name)
        if "secret" in vol:
            plan.files += _map_files(name, "secret", vol["secret"], secrets, ns, DEFAULT_MODE)
        elif "configMap" in vol:
            src = vol["configMap"]
            plan.files += _map_files(name, "configMap", src, configmaps, ns, DEFAULT_MODE)
        elif "downwardAPI" in vol:
            plan.files += _downward_files(name, vol["downwardAPI"], pod, DEFAULT_MODE)
        elif "projected" in vol:
            proj = vol["projected"]
            mode = int(proj.get("defaultMode", DEFAULT_MODE))
            for src in proj.get("sources") or []:
                if "serviceAccountToken" in src and token:
                    rel = src["serviceAccountToken"].get("path", "token")
                    plan.files.append(VolumeFile(posixpath.join(name, rel), token.encode(), mode))
                elif "configMap" in src:
                    plan.files += _map_files(
                        name, "configMap", src["configMap"], configmaps, ns, mode
                    )
                elif "secret" in src:
                    plan.files += _map_files(name, "secret", src["secret"], secrets, ns, mode)
                elif "downwardAPI" in src:
                    plan.files += _downward_files(name, src["downwardAPI"], pod, mode)
    return plan


def write_volumes(plan: VolumePlan, root: Path) -> None:
    """Create ``plan``'s directories and files under ``root`` (the pod's ``volumes/``).

    Raises:
        ConfigError: an item path that leaves its volume (absolute or with ``..``); a
            PersistentVolume directory that is missing and may not be created."""
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in plan.links:
        target = Path(link.target)
        if link.create:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        elif not target.is_dir():
            raise ConfigError(f"volume {link.name!r}: directory {link.target} does not exist")
        here = root / link.name
        if here.is_symlink() or here.exists():
            if here.is_symlink() and Path(os.readlink(here)) == target:
                continue
            here.unlink()
        here.symlink_to(target, target_is_directory=True)
    for f in plan.files:
        norm = posixpath.normpath(f.path)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ConfigError(f"volume item path {f.path!r} leaves its volume")
        p = root / norm
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)  # a read-only file from an earlier run cannot be rewritten
        p.write_bytes(f.data)
        p.chmod(f.mode)


#: run as ``sh -c MOUNT_SCRIPT sh <source> <mountPath> <rw|ro> ... -- <argv>``: bind-mount each
#: source at its mountPath (created when missing), read-only where asked, then exec argv.
MOUNT_SCRIPT = (
    'set -e; while [ "$1" != "--" ]; do mkdir -p "$1" "$2"; mount --bind "$1" "$2"; '
    'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi; shift 3; done; '
    'shift; exec "$@"'
)


def mount_prefix(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> list[str]:
    """The command that runs ``container``'s argv (appended after it) with its
    persistentVolumeClaim volumes at their ``mountPath`` (and ``subPath``): a private mount
    namespace (``unshare --mount``, which needs root) holding a bind mount of each, read-only
    when the mount or the claim volume says ``readOnly``.  Empty when the container mounts
    no such volume (it then runs as before)."""
    vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    pairs: list[str] = []
    for m in container.get("volumeMounts") or []:
        vol = vols.get(m["name"], {})
        if "persistentVolumeClaim" not in vol:
            continue
        sub = posixpath.normpath(m.get("subPath") or ".")
        if sub.startswith("/") or sub == ".." or sub.startswith("../"):
            raise ConfigError(f"volume {m['name']!r}: subPath {sub!r} leaves the volume")
        ro = m.get("readOnly") or vol["persistentVolumeClaim"].get("readOnly")
        base = pod_dir / "volumes" / m["name"]
        source = base / sub if sub != "." else base
        pairs += [str(source), m["mountPath"], "ro" if ro else "rw"]
    if not pairs:
        return []
    return ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", MOUNT_SCRIPT, "sh", *pairs, "--"]  # fmt: skip
