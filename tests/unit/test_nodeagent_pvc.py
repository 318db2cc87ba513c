"""persistentVolumeClaim volumes on the local node (:mod:`voicetrack_local.nodeagent.volumes`):
the claim → bound PV → host directory plan (pure), the link written into the pod's
``volumes/``, and a real process seeing that directory at its ``mountPath`` through
:func:`mount_prefix` (``unshare --mount`` + bind mount; needs root, as the agent does)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.cluster import STATIC_VOLUMES, STORAGE_CLASS, static_volumes
from voicetrack_local.nodeagent.podspec import ConfigError
from voicetrack_local.nodeagent.volumes import (
    VolumeLink,
    claim_names,
    mount_prefix,
    plan_volumes,
    write_volumes,
)

pytestmark = pytest.mark.unit


def pod(read_only: bool = False, mount: dict[str, Any] | None = None) -> dict[str, Any]:
    claim: dict[str, Any] = {"claimName": "data"}
    if read_only:
        claim["readOnly"] = True
    return {
        "metadata": {"name": "op", "namespace": "vt"},
        "spec": {
            "volumes": [{"name": "tmp", "emptyDir": {}},
                        {"name": "state", "persistentVolumeClaim": claim}],
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                mount or {"name": "state", "mountPath": "/var/lib/voicetrack"}]}],
        },
    }  # fmt: skip


def pvc(phase: str = "Bound", volume: str | None = "pv-1") -> dict[str, Any]:
    spec = {"volumeName": volume} if volume else {}
    return {"spec": spec, "status": {"phase": phase}}


def pv(source: dict[str, Any], claim: tuple[str, str] = ("vt", "data")) -> dict[str, Any]:
    ref = {"kind": "PersistentVolumeClaim", "namespace": claim[0], "name": claim[1]}
    return {"spec": {**source, "claimRef": ref}}


def test_a_bound_claim_plans_a_link_to_its_host_path_volume() -> None:
    p = pod()
    assert claim_names(p) == {"data"}
    plan = plan_volumes(p, None, {}, {}, {"data": pvc()},
                        {"pv-1": pv({"hostPath": {"path": "/srv/pv/one/"}})})  # fmt: skip
    assert plan.dirs == ["tmp"]  # the claim volume is not an empty directory
    assert plan.links == [VolumeLink("state", "/srv/pv/one", create=True, read_only=False)]
    # DirectoryOrCreate creates; Directory and local volumes must exist already.
    for source, create in (({"hostPath": {"path": "/a", "type": "DirectoryOrCreate"}}, True),
                           ({"hostPath": {"path": "/a", "type": "Directory"}}, False),
                           ({"local": {"path": "/a"}}, False)):  # fmt: skip
        (link,) = plan_volumes(p, None, {}, {}, {"data": pvc()}, {"pv-1": pv(source)}).links
        assert link.create is create, source
    (link,) = plan_volumes(pod(read_only=True), None, {}, {}, {"data": pvc()},
                           {"pv-1": pv({"hostPath": {"path": "/a"}})}).links  # fmt: skip
    assert link.read_only is True


@pytest.mark.parametrize(
    ("pvcs", "pvs", "message"),
    [
        ({"data": None}, {}, 'persistentvolumeclaim "data" not found'),
        ({"data": pvc("Pending", None)}, {}, 'persistentvolumeclaim "data" is not bound'),
        ({"data": pvc()}, {"pv-1": None}, 'persistentvolume "pv-1" not found'),
        ({"data": pvc()}, {"pv-1": pv({"hostPath": {"path": "/a"}}, ("other", "data"))},
         "is not bound to claim vt/data"),
        ({"data": pvc()}, {"pv-1": pv({"nfs": {"server": "x", "path": "/"}})},
         "only hostPath and local volumes are supported"),
        ({"data": pvc()}, {"pv-1": pv({"hostPath": {"path": "rel/dir"}})}, "is not absolute"),
    ],
)  # fmt: skip
def test_an_unusable_claim_is_a_config_error_retried_later(
    pvcs: dict[str, Any], pvs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_volumes(pod(), None, {}, {}, pvcs, pvs)


def test_write_volumes_creates_the_host_directory_and_links_it(tmp_path: Path) -> None:
    target = tmp_path / "pv" / "one"
    plan = plan_volumes(pod(), None, {}, {}, {"data": pvc()},
                        {"pv-1": pv({"hostPath": {"path": str(target)}})})  # fmt: skip
    root = tmp_path / "pod" / "volumes"
    write_volumes(plan, root)
    write_volumes(plan, root)  # a second prepare (agent restart) is the same
    assert target.is_dir() and (root / "state").resolve() == target
    assert (root / "tmp").is_dir() and not (root / "tmp").is_symlink()
    (target / "kept.db").write_text("x")
    assert (root / "state" / "kept.db").read_text() == "x"
    missing = plan_volumes(pod(), None, {}, {}, {"data": pvc()},
                           {"pv-1": pv({"local": {"path": str(tmp_path / "nope")}})})
    with pytest.raises(ConfigError, match="does not exist"):
        write_volumes(missing, tmp_path / "pod2" / "volumes")


def test_no_claim_no_mount_namespace() -> None:
    p = pod()
    p["spec"]["containers"][0]["volumeMounts"].pop()
    assert mount_prefix(p, p["spec"]["containers"][0], Path("/x")) == []
    bad = pod(mount={"name": "state", "mountPath": "/d", "subPath": "../up"})
    with pytest.raises(ConfigError, match="leaves the volume"):
        mount_prefix(bad, bad["spec"]["containers"][0], Path("/x"))


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="bind mounts in a private mount namespace need root and unshare",
)


def _run_in_pod(tmp_path: Path, p: dict[str, Any], script: str) -> subprocess.CompletedProcess[str]:
    target = tmp_path / "pv"
    plan = plan_volumes(p, None, {}, {}, {"data": pvc()},
                        {"pv-1": pv({"hostPath": {"path": str(target)}})})  # fmt: skip
    write_volumes(plan, tmp_path / "pod" / "volumes")
    argv = [*mount_prefix(p, p["spec"]["containers"][0], tmp_path / "pod"), "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@needs_root
def test_the_process_sees_the_volume_at_its_mount_path_and_only_it_does(tmp_path: Path) -> None:
    at = tmp_path / "mnt" / "var-lib-voicetrack"  # a mountPath that leaves no trace elsewhere
    p = pod(mount={"name": "state", "mountPath": str(at)})
    res = _run_in_pod(tmp_path, p, f'echo hello > "{at}/voicetrack.db" && cat /proc/self/mountinfo')
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pv" / "voicetrack.db").read_text() == "hello\n"  # landed in the PV
    assert str(at) in res.stdout
    assert not (at / "voicetrack.db").exists()  # the host's mount table is untouched
    # subPath: a directory inside the volume, created when missing.
    p = pod(mount={"name": "state", "mountPath": str(at), "subPath": "db"})
    res = _run_in_pod(tmp_path, p, f'echo sub > "{at}/f"')
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pv" / "db" / "f").read_text() == "sub\n"


@needs_root
def test_a_read_only_claim_refuses_writes(tmp_path: Path) -> None:
    at = tmp_path / "mnt" / "ro"
    for p in (pod(read_only=True, mount={"name": "state", "mountPath": str(at)}),
              pod(mount={"name": "state", "mountPath": str(at), "readOnly": True})):  # fmt: skip
        (tmp_path / "pv").mkdir(exist_ok=True)
        (tmp_path / "pv" / "seen").write_text("yes")
        res = _run_in_pod(tmp_path, p, f'cat "{at}/seen" && echo x > "{at}/new"')
        assert res.stdout.startswith("yes"), res.stderr
        assert res.returncode != 0 and "Read-only file system" in res.stderr, res.stderr
        assert not (tmp_path / "pv" / "new").exists()


def test_local_up_makes_a_default_class_and_static_host_path_volumes_in_the_state_dir() -> None:
    sc, *pvs = static_volumes(Path("/state"))
    assert sc["kind"] == "StorageClass" and sc["metadata"]["name"] == STORAGE_CLASS
    assert sc["provisioner"] == "kubernetes.io/no-provisioner"
    assert sc["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert len(pvs) == STATIC_VOLUMES
    assert pvs[0]["metadata"]["name"] == "local-pv-01"
    assert pvs[0]["spec"]["hostPath"] == {"path": "/state/volumes/pv-01",
                                          "type": "DirectoryOrCreate"}  # fmt: skip
    assert {p["spec"]["storageClassName"] for p in pvs} == {STORAGE_CLASS}
    assert len({p["spec"]["hostPath"]["path"] for p in pvs}) == STATIC_VOLUMES
