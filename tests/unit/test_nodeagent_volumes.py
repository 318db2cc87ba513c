"""The node agent's volume plans (:mod:`voicetrack_local.nodeagent.volumes`): what each
volume of a pod becomes on this host, decided without a cluster, then written to disk."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.nodeagent.podspec import ConfigError
from voicetrack_local.nodeagent.volumes import (
    VolumeFile,
    VolumePlan,
    plan_volumes,
    volume_refs,
    write_volumes,
)

pytestmark = pytest.mark.unit


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SECRETS: dict[str, dict[str, Any] | None] = {
    "creds": {"data": {"pw": b64(b"hunter2"), "user": b64(b"ada")}},
}
CONFIGMAPS: dict[str, dict[str, Any] | None] = {
    "cfg": {"data": {"colour": "teal"}, "binaryData": {"blob": b64(b"\x00\x01")}},
}


def pod(*volumes: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "rec"}},
        "spec": {"containers": [], "volumes": list(volumes)},
    }


def files(plan: VolumePlan) -> dict[str, tuple[bytes, int]]:
    return {f.path: (f.data, f.mode) for f in plan.files}


def test_empty_dir_is_a_private_directory_and_nothing_else() -> None:
    plan = plan_volumes(pod({"name": "scratch", "emptyDir": {}}), None, {}, {})
    assert plan.dirs == ["scratch"]
    assert plan.files == []


def test_secret_all_keys_with_default_mode() -> None:
    plan = plan_volumes(pod({"name": "s", "secret": {"secretName": "creds"}}), None, SECRETS, {})
    assert files(plan) == {"s/pw": (b"hunter2", 0o644), "s/user": (b"ada", 0o644)}


def test_secret_items_choose_keys_paths_and_modes() -> None:
    vol = {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400, "items": [
        {"key": "pw", "path": "db/password"}, {"key": "user", "path": "user", "mode": 0o440}]}}
    plan = plan_volumes(pod(vol), None, SECRETS, {})
    assert files(plan) == {"s/db/password": (b"hunter2", 0o400), "s/user": (b"ada", 0o440)}


def test_missing_secret_key_or_object_unless_optional() -> None:
    key = {"name": "s", "secret": {"secretName": "creds", "items": [{"key": "no", "path": "x"}]}}
    with pytest.raises(ConfigError, match="couldn't find key no in secret ns/creds"):
        plan_volumes(pod(key), None, SECRETS, {})
    gone = {"name": "s", "secret": {"secretName": "gone"}}
    with pytest.raises(ConfigError, match="secret \"gone\" not found \\(volume 's'\\)"):
        plan_volumes(pod(gone), None, {"gone": None}, {})
    gone["secret"]["optional"] = True
    key["secret"]["optional"] = True
    plan = plan_volumes(pod(gone, key), None, {**SECRETS, "gone": None}, {})
    assert plan.dirs == ["s", "s"] and plan.files == []


def test_config_map_data_and_binary_data() -> None:
    plan = plan_volumes(pod({"name": "c", "configMap": {"name": "cfg"}}), None, {}, CONFIGMAPS)
    assert files(plan) == {"c/colour": (b"teal", 0o644), "c/blob": (b"\x00\x01", 0o644)}


def test_projected_token_paths_secrets_config_maps_and_downward_api() -> None:
    vol = {"name": "kube-api-access", "projected": {"defaultMode": 0o420, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"serviceAccountToken": {"path": "nested/aud-token", "audience": "vault"}},
        {"configMap": {"name": "cfg", "items": [{"key": "colour", "path": "colour"}]}},
        {"secret": {"name": "creds", "items": [{"key": "pw", "path": "pw", "mode": 0o400}]}},
        {"downwardAPI": {"items": [
            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}  # fmt: skip
    plan = plan_volumes(pod(vol), "tok.en", SECRETS, CONFIGMAPS)
    assert files(plan) == {
        "kube-api-access/token": (b"tok.en", 0o420),
        "kube-api-access/nested/aud-token": (b"tok.en", 0o420),
        "kube-api-access/colour": (b"teal", 0o420),
        "kube-api-access/pw": (b"hunter2", 0o400),
        "kube-api-access/namespace": (b"ns", 0o420),
    }
    no_token = plan_volumes(pod(vol), None, SECRETS, CONFIGMAPS)  # automount off
    assert "kube-api-access/token" not in files(no_token)


def test_downward_api_volume() -> None:
    vol = {"name": "info", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600}]}}
    assert files(plan_volumes(pod(vol), None, {}, {})) == {
        "info/labels": (b'app="rec"', 0o644),
        "info/name": (b"p", 0o600),
    }


def test_volume_refs_name_what_the_volumes_read() -> None:
    p = pod(
        {"name": "a", "secret": {"secretName": "creds"}},
        {"name": "b", "configMap": {"name": "cfg"}},
        {"name": "c", "projected": {"sources": [{"secret": {"name": "more"}},
                                                {"configMap": {"name": "cfg2"}}]}},
        {"name": "d", "emptyDir": {}},
    )  # fmt: skip
    refs = volume_refs(p)
    assert refs.secrets == {"creds", "more"}
    assert refs.configmaps == {"cfg", "cfg2"}


def test_write_volumes_applies_modes_rewrites_read_only_files_and_stays_inside(
    tmp_path: Path,
) -> None:
    plan = VolumePlan(
        dirs=["scratch", "s"],
        files=[VolumeFile("s/db/password", b"v1", 0o400), VolumeFile("s/user", b"ada")],
    )
    write_volumes(plan, tmp_path)
    assert (tmp_path / "scratch").is_dir()
    pw = tmp_path / "s" / "db" / "password"
    assert pw.read_bytes() == b"v1"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "s" / "user").stat().st_mode) == 0o644
    plan.files[0] = VolumeFile("s/db/password", b"v2", 0o400)
    write_volumes(plan, tmp_path)  # a second preparation (agent restart) rewrites it
    assert pw.read_bytes() == b"v2"
    for bad in ("s/../../escape", "/etc/passwd"):
        with pytest.raises(ConfigError, match="leaves its volume"):
            write_volumes(VolumePlan(files=[VolumeFile(bad, b"x")]), tmp_path)
    assert not (tmp_path.parent / "escape").exists()
