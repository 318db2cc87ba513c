"""What a pod's volumes hold on this host: :func:`plan_volumes` (pure) decides every
directory and file, :func:`write_volumes` puts the plan on disk under the pod's
``volumes/`` directory (``volumes/<name>/…``).

Supported: emptyDir (an empty private directory), secret, configMap, downwardAPI (fieldRef
items) and projected (serviceAccountToken, secret, configMap, downwardAPI).  File modes
follow ``defaultMode`` (0644 unless set) and each item's ``mode``.
"""

from __future__ import annotations

import base64
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


@dataclass
class VolumePlan:
    """Every volume's directory (relative to ``volumes/``) and the files inside them."""

    dirs: list[str] = field(default_factory=list)
    files: list[VolumeFile] = field(default_factory=list)


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
    pod: dict[str, Any], token: str | None, secrets: Objects, configmaps: Objects
) -> VolumePlan:
    """What to materialise for ``pod``'s volumes.

    Args:
        token: the pod's ServiceAccount token (projected ``serviceAccountToken`` sources),
            or None when it is not mounted (those sources are then left out).
        secrets, configmaps: the objects :func:`volume_refs` names, fetched (None: missing).

    Returns:
        one directory per volume (an emptyDir is just that) and the files of the others.

    Raises:
        ConfigError: a missing Secret, ConfigMap or key that is not ``optional``, an
            unsupported downward-API field."""
    ns = pod["metadata"].get("namespace", "")
    plan = VolumePlan()
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
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
        ConfigError: an item path that leaves its volume (absolute or with ``..``)."""
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in plan.files:
        norm = posixpath.normpath(f.path)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ConfigError(f"volume item path {f.path!r} leaves its volume")
        p = root / norm
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)  # a read-only file from an earlier run cannot be rewritten
        p.write_bytes(f.data)
        p.chmod(f.mode)
