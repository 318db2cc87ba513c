"""Unit tests of the node agent's pure podman builders (:mod:`.podmanargs`) and probes
(:mod:`.probes`), and of the readiness that probes feed into the pod status."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.podmanargs import (
    AGENT_LABEL,
    check_non_root,
    container_name,
    effective_security,
    env_args,
    image_candidates,
    mount_args,
    podman_run_args,
    pull_policy,
    resource_args,
)
from voicetrack_local.nodeagent.podspec import ConfigError, container_env, service_env
from voicetrack_local.nodeagent.podstatus import pod_conditions
from voicetrack_local.nodeagent.probes import ProbeState, probe_states, run_handler, run_probe

pytestmark = pytest.mark.unit

POD_DIR = Path("/state/agent/pods/ns_p_u-1")


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"containers": [], **spec}}  # fmt: skip


def test_image_names_resolve_to_local_storage_first() -> None:
    assert image_candidates("voicetrack/operator:0.1.0") == [
        "localhost/voicetrack/operator:0.1.0", "docker.io/voicetrack/operator:0.1.0"]
    assert image_candidates("python") == ["localhost/python:latest",
                                          "docker.io/library/python:latest"]
    assert image_candidates("localhost:5000/a/b") == ["localhost:5000/a/b:latest"]
    assert image_candidates("quay.io/x/y@sha256:ab") == ["quay.io/x/y@sha256:ab"]
    assert image_candidates("localhost/voicetrack-base:bookworm") == [
        "localhost/voicetrack-base:bookworm"]  # fmt: skip
    with pytest.raises(ConfigError):
        image_candidates(" ")


def test_pull_policy_defaults_like_the_api_server() -> None:
    assert pull_policy({"image": "a:1.0"}) == "IfNotPresent"
    assert pull_policy({"image": "a"}) == "Always"
    assert pull_policy({"image": "a:latest"}) == "Always"
    assert pull_policy({"image": "a:latest", "imagePullPolicy": "Never"}) == "Never"


def test_container_security_context_overrides_the_pods() -> None:
    p = pod(securityContext={"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": True,
                             "supplementalGroups": [5], "fsGroup": 7})  # fmt: skip
    sec = effective_security(p, {"securityContext": {"runAsUser": 3000,
                                                     "allowPrivilegeEscalation": False}})
    assert (sec.run_as_user, sec.run_as_group, sec.run_as_non_root) == (3000, 2000, True)
    assert sec.groups == (5, 7) and sec.no_new_privileges
    assert not effective_security(pod(), {}).no_new_privileges  # unset is not false


@pytest.mark.parametrize(
    ("sc", "image_user", "message"),
    [
        ({"runAsNonRoot": True}, "", "image will run as root"),
        ({"runAsNonRoot": True}, "root", "image will run as root"),
        ({"runAsNonRoot": True}, "0:0", "image will run as root"),
        ({"runAsNonRoot": True}, "app", "image has non-numeric user (app)"),
        ({"runAsNonRoot": True, "runAsUser": 0}, "10001", "runAsUser breaks non-root policy"),
    ],
)
def test_run_as_non_root_refusals(sc: dict[str, Any], image_user: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_non_root(effective_security(pod(securityContext=sc), {}), image_user, "p", "c")


def test_run_as_non_root_accepts_numeric_non_root_users() -> None:
    sec = effective_security(pod(securityContext={"runAsNonRoot": True}), {})
    check_non_root(sec, "10001:10001", "p", "c")
    sec = effective_security(pod(securityContext={"runAsNonRoot": True, "runAsUser": 5}), {})
    check_non_root(sec, "root", "p", "c")


def test_resources_become_cgroup_limits() -> None:
    args = resource_args({"resources": {"limits": {"memory": "64Mi", "cpu": "500m"},
                                        "requests": {"cpu": "250m"}}})  # fmt: skip
    assert args == ["--memory", "67108864", "--memory-swap", "67108864", "--cpus", "0.5",
                    "--cpu-shares", "256"]  # fmt: skip
    assert resource_args({"resources": {"requests": {"cpu": "1m"}}}) == ["--cpu-shares", "2"]
    assert resource_args({}) == []


def test_mounts_bind_volumes_read_only_where_kubelet_does_and_size_tmpfs() -> None:
    p = pod(volumes=[{"name": "s", "secret": {"secretName": "x"}},
                     {"name": "tok", "projected": {"sources": []}},
                     {"name": "scratch", "emptyDir": {"sizeLimit": "10Mi"}},
                     {"name": "shared", "emptyDir": {"sizeLimit": "1Mi"}},
                     {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
            containers=[{"name": "a", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]},
                        {"name": "b"}])  # fmt: skip
    ctr = {"name": "b", "volumeMounts": [
        {"name": "s", "mountPath": "/etc/s"},
        {"name": "tok", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "shared", "mountPath": "/shared"},
        {"name": "data", "mountPath": "/data", "subPath": "sub", "readOnly": True}]}
    p["spec"]["containers"][1] = ctr
    v = POD_DIR / "volumes"
    assert mount_args(p, ctr, POD_DIR) == [
        "--mount", f"type=bind,source={v}/s,destination=/etc/s,ro",
        "--mount", f"type=bind,source={v}/tok,"
                   "destination=/var/run/secrets/kubernetes.io/serviceaccount,ro",
        "--mount", "type=tmpfs,destination=/scratch,tmpfs-mode=1777,tmpfs-size=10485760",
        # mounted by two containers: one shared host directory (the size is not enforced)
        "--mount", f"type=bind,source={v}/shared,destination=/shared",
        "--mount", f"type=bind,source={v}/data/sub,destination=/data,ro",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="leaves the volume"):
        mount_args(p, {"volumeMounts": [{"name": "data", "mountPath": "/d",
                                         "subPath": "../x"}]}, POD_DIR)  # fmt: skip
    with pytest.raises(ConfigError, match="no volume of that name"):
        mount_args(p, {"volumeMounts": [{"name": "nope", "mountPath": "/d"}]}, POD_DIR)


def test_env_values_travel_through_podmans_environment_not_its_command_line() -> None:
    opts, through = env_args({"TOKEN": "s3cret", "PATH": "/bin", "A.B": "x"})
    assert opts == ["--env", "TOKEN", "--env", "PATH=/bin", "--env", "A.B=x"]
    assert through == {"TOKEN": "s3cret"}


def test_container_env_for_an_image_has_no_host_paths() -> None:
    p = pod(volumes=[{"name": "t", "emptyDir": {}}])
    ctr = {"name": "c", "volumeMounts": [{"name": "t", "mountPath": "/tmp"}],
           "env": [{"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST)"}]}
    base = service_env("127.0.0.1", 6443)
    env = container_env(p, ctr, base, pod_dir=POD_DIR, secrets={}, configmaps={},
                        capacity={}, host_paths=False)  # fmt: skip
    assert "TMPDIR" not in env and "VOICETRACK_TERMINATION_LOG" not in env
    assert env["KUBERNETES_SERVICE_PORT"] == "6443" and env["URL"] == "https://127.0.0.1"
    host = container_env(p, ctr, {}, pod_dir=POD_DIR, secrets={}, configmaps={}, capacity={})
    assert host["TMPDIR"] == str(POD_DIR / "volumes" / "t")


def test_podman_run_args_for_a_restricted_container() -> None:
    p = pod(securityContext={"runAsNonRoot": True, "runAsUser": 10001},
            volumes=[{"name": "s", "secret": {"secretName": "x"}}])  # fmt: skip
    ctr = {"name": "main", "image": "voicetrack/operator:0.1.0", "workingDir": "/w",
           "command": ["voicetrack-operator", "--ns=$(NS)"], "args": ["run"],
           "terminationMessagePath": "/tmp/msg",
           "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                               "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
           "resources": {"limits": {"memory": "1Gi"}},
           "volumeMounts": [{"name": "s", "mountPath": "/etc/s"}]}  # fmt: skip
    name = container_name(p, "main", 2)
    assert name == "k8s_main_p_ns_u-1_2"
    term = POD_DIR / "termination" / "main"
    args, through = podman_run_args(
        p, ctr, image="localhost/voicetrack/operator:0.1.0", image_user="10001:10001",
        env={"NS": "ns", "PATH": "/x"}, pod_dir=POD_DIR, termination_file=term, name=name,
        agent_id="abc")  # fmt: skip
    assert args == [
        "run", "--name", name, "--pull", "never", "--network", "host",
        "--hostname", "p", "--log-driver", "none", "--stop-timeout", "0",
        "--label", f"{AGENT_LABEL}=abc", "--label", "io.kubernetes.pod.namespace=ns",
        "--label", "io.kubernetes.pod.name=p", "--label", "io.kubernetes.pod.uid=u-1",
        "--label", "io.kubernetes.container.name=main",
        "--workdir", "/w",
        "--user", "10001", "--read-only", "--read-only-tmpfs=false",
        "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
        "--security-opt", "no-new-privileges",
        "--memory", str(1 << 30), "--memory-swap", str(1 << 30),
        "--mount", f"type=bind,source={POD_DIR}/volumes/s,destination=/etc/s,ro",
        "--mount", f"type=bind,source={term},destination=/tmp/msg",
        "--env", "NS", "--env", "PATH=/x",
        "--entrypoint", json.dumps(["voicetrack-operator", "--ns=ns"]),
        "localhost/voicetrack/operator:0.1.0", "run",
    ]  # fmt: skip
    assert through == {"NS": "ns"}
    # no command: the image's entrypoint with args; the default termination path
    args, _ = podman_run_args(
        pod(), {"name": "c", "args": ["--help"]}, image="i", image_user="", env={},
        pod_dir=POD_DIR, termination_file=term, name="n", agent_id="a")  # fmt: skip
    assert "--entrypoint" not in args and args[-2:] == ["i", "--help"]
    assert f"type=bind,source={term},destination=/dev/termination-log" in args
    with pytest.raises(ConfigError, match="image will run as root"):
        podman_run_args(pod(securityContext={"runAsNonRoot": True}), {"name": "c"}, image="i",
                        image_user="", env={}, pod_dir=POD_DIR, termination_file=term,
                        name="n", agent_id="a")  # fmt: skip


# ---- probes


def test_probe_thresholds_and_initial_delay() -> None:
    st = ProbeState("livenessProbe", {"initialDelaySeconds": 5, "periodSeconds": 2,
                                      "failureThreshold": 2}, started=100.0)  # fmt: skip
    assert not st.due(104.9) and st.due(105.0)
    assert st.record(True, 105.0) is True  # successThreshold 1
    assert st.next_at == 107.0
    assert st.record(False, 107.0) is None
    assert st.record(False, 109.0) is False  # the second failure in a row
    assert st.failures == 0  # liveness counts anew for the restarted container
    ready = ProbeState("readinessProbe", {"successThreshold": 2, "failureThreshold": 1}, 0.0)
    assert ready.record(True, 0) is None and ready.record(True, 10) is True
    assert ready.record(False, 20) is False and ready.record(False, 30) is None
    assert ready.record(True, 40) is None and ready.record(True, 50) is True


def test_probe_states_for_declared_probes_only() -> None:
    states = probe_states({"readinessProbe": {"exec": {"command": ["true"]}}}, 1.0)
    assert list(states) == ["readinessProbe"]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def _serve(host: str) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer((host, 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def http_server() -> Iterator[int]:
    srv = _serve("127.0.0.1")
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def no_exec(cmd: list[str], timeout: float) -> int:
    raise AssertionError("not an exec probe")


def test_http_probe_succeeds_on_2xx_3xx_and_resolves_named_ports(http_server: int) -> None:
    ctr = {"ports": [{"name": "web", "containerPort": http_server}]}
    ok, _ = run_handler({"httpGet": {"path": "/ok", "port": "web"}}, ctr, no_exec)
    assert ok
    ok, msg = run_handler({"httpGet": {"path": "/bad", "port": http_server}}, ctr, no_exec)
    assert not ok and msg == "HTTP probe failed with statuscode: 503"
    ok, msg = run_handler({"httpGet": {"path": "/", "port": "nope"}}, ctr, no_exec)
    assert not ok and "no container port" in msg


def test_tcp_and_exec_probes(http_server: int) -> None:
    assert run_handler({"tcpSocket": {"port": http_server}}, {}, no_exec)[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not run_handler({"tcpSocket": {"port": closed}}, {}, no_exec)[0]

    def run(cmd: list[str], timeout: float) -> int:
        return subprocess.run(cmd, timeout=timeout, check=False).returncode

    assert run_handler({"exec": {"command": ["true"]}}, {}, run)[0]
    ok, msg = run_handler({"exec": {"command": ["sh", "-c", "exit 4"]}}, {}, run)
    assert not ok and msg.endswith("exited with 4")
    ok, msg = run_handler({"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 0.2}, {}, run)
    assert not ok and "timed out" in msg


def test_readiness_probe_decides_container_and_pod_readiness() -> None:
    c = Container("c", {"readinessProbe": {"exec": {"command": ["true"]}}}, False)
    c.pid, c.state = 42, {"running": {"startedAt": "t"}}
    c.probes = probe_states(c.spec, 0.0)

    def ready() -> str:
        conds = pod_conditions([], phase="Running", prepared=True, inits=[], ctrs=[c], now="t")
        return next(x["status"] for x in conds if x["type"] == "Ready")

    assert not c.ready and ready() == "False"  # running, probe not passed yet
    c.probes["readinessProbe"].record(True, 1.0)
    assert c.ready and ready() == "True"
    c.kill_at = 5.0  # failed liveness: being stopped
    assert not c.ready
    plain = Container("d", {}, False)
    plain.pid, plain.state = 43, {"running": {"startedAt": "t"}}
    assert plain.ready and plain.started  # no probes: ready once running


# ---- exec over WebSocket


def test_websocket_handshake_and_protocol_choice() -> None:
    from voicetrack_local.nodeagent.execstream import accept_key, choose_protocol

    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455
    assert choose_protocol("v4.channel.k8s.io, v5.channel.k8s.io") == "v5.channel.k8s.io"
    assert choose_protocol("base64.channel.k8s.io,v4.channel.k8s.io") == "v4.channel.k8s.io"
    assert choose_protocol("channel.k8s.io") is None and choose_protocol(None) is None


def test_frames_round_trip_masked_and_long() -> None:
    import io
    import struct

    from voicetrack_local.nodeagent.execstream import OP_BINARY, encode_frame, read_frame

    for n in (0, 5, 200, 70000):
        payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert read_frame(io.BytesIO(encode_frame(OP_BINARY, payload)).read) == (
            True, OP_BINARY, payload)  # fmt: skip
    mask = b"\x01\x02\x03\x04"
    data = b"\x00hello"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    frame = bytes([0x82, 0x80 | len(data)]) + mask + masked  # a client's masked frame
    assert read_frame(io.BytesIO(frame).read) == (True, OP_BINARY, data)
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(struct.pack("!BB", 0x82, 10) + b"abc").read)


def test_exit_status_is_the_kubelets() -> None:
    from voicetrack_local.nodeagent.execstream import exit_status

    assert json.loads(exit_status(0)) == {"metadata": {}, "status": "Success"}
    st = json.loads(exit_status(4))
    assert st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]


def test_serve_exec_streams_channels_stdin_close_and_status(tmp_path: Path) -> None:
    import io
    import os

    from voicetrack_local.nodeagent.execstream import (
        CLOSE,
        ERROR,
        OP_BINARY,
        OP_CLOSE,
        STDIN,
        STDOUT,
        encode_frame,
        read_frame,
        serve_exec,
    )

    incoming = io.BufferedReader(io.BytesIO(  # stdin "hi\n", then v5's close of stdin
        encode_frame(OP_BINARY, bytes([STDIN]) + b"hi\n")
        + encode_frame(OP_BINARY, bytes([CLOSE, STDIN]))))  # fmt: skip
    out = io.BytesIO()
    rc = serve_exec(incoming, out, ["sh", "-c", "cat; echo oops >&2; exit 5"],
                    dict(os.environ), str(tmp_path), stdin=True)  # fmt: skip
    assert rc == 5
    frames, stream = [], io.BytesIO(out.getvalue())
    while stream.tell() < len(out.getvalue()):
        frames.append(read_frame(stream.read))
    by_channel: dict[int, bytes] = {}
    for _, op, data in frames:
        if op == OP_BINARY:
            by_channel[data[0]] = by_channel.get(data[0], b"") + data[1:]
    assert by_channel[STDOUT] == b"hi\n" and by_channel[2] == b"oops\n"
    assert json.loads(by_channel[ERROR])["details"]["causes"][0]["message"] == "5"
    assert frames[-1][1] == OP_CLOSE


def test_runtime_is_read_from_the_state_dir_and_checked(tmp_path: Path) -> None:
    from voicetrack_local.cluster import up
    from voicetrack_local.nodeagent.agent import read_runtime
    from voicetrack_local.state import ClusterError

    assert read_runtime(tmp_path) == "process"  # nothing recorded: the default
    (tmp_path / "runtime").write_text("podman\n")
    assert read_runtime(tmp_path) == "podman"
    (tmp_path / "runtime").write_text("docker\n")
    with pytest.raises(ValueError, match="unknown runtime 'docker'"):
        read_runtime(tmp_path)
    with pytest.raises(ClusterError, match="unknown runtime 'kata'"):
        up(tmp_path, runtime="kata")


def test_container_ids_name_the_runtime() -> None:
    from voicetrack_local.nodeagent.podman import PodmanContainer
    from voicetrack_local.nodeagent.podstatus import container_status

    c = PodmanContainer("c", {"image": "i"}, False, cname="k8s_c_p_ns_u_0")
    c.pid, c.state = 42, {"running": {"startedAt": "t"}}
    assert container_status(c)["containerID"] == "podman://k8s_c_p_ns_u_0"
    p = Container("c", {"image": "i"}, False)
    p.pid, p.state = 42, {"running": {"startedAt": "t"}}
    assert container_status(p)["containerID"] == "voicetrack://42"


def test_probes_go_to_the_pod_ip_and_fall_back_to_the_nodes_loopback(http_server: int) -> None:
    """The probe's host is the pod IP (each local pod has a loopback address of its own);
    a process that binds 127.0.0.1 (every local pod shares it) still passes, a process
    bound to another pod's address does not, and an explicit host gets no second try."""
    ours, other = "127.64.9.10", "127.64.9.11"

    def me() -> list[int]:  # the "pod" whose listeners on 127.0.0.1 these are
        return [os.getpid()]

    srv = _serve(ours)
    port = srv.server_address[1]
    try:
        assert run_handler({"httpGet": {"path": "/ok", "port": port}}, {}, no_exec, ours)[0]
        assert run_handler({"tcpSocket": {"port": port}}, {}, no_exec, ours)[0]
        ok, msg = run_handler({"tcpSocket": {"port": port}}, {}, no_exec, other)
        assert not ok and "Connection refused" in msg and "at 127.0.0.1" in msg, msg
        # a container answered at its pod IP is never again answered by 127.0.0.1
        st = ProbeState("livenessProbe", {"tcpSocket": {"port": port}}, 0.0)
        assert run_probe(st, {}, no_exec, ours) == (True, "") and st.pod_ip_answered
    finally:
        srv.shutdown()
        srv.server_close()
    with socket.socket() as late:  # another pod on 127.0.0.1 and the same port
        late.bind(("127.0.0.1", port))
        late.listen()
        ok, msg = run_probe(st, {}, no_exec, ours)
        assert not ok and "at 127.0.0.1" not in msg, msg
        fresh = ProbeState("livenessProbe", {"tcpSocket": {"port": port}}, 0.0)
        assert run_probe(fresh, {}, no_exec, ours, me)[0] and not fresh.pod_ip_answered
        assert not run_probe(fresh, {}, no_exec, ours)[0]  # not the pod's: no process known
    # bound to 127.0.0.1 by the pod (here: this process): passes through the fallback, for
    # HTTP and TCP, and says so (another process's listener: test_nodeagent_listeners)
    http = {"httpGet": {"path": "/ok", "port": http_server}}
    assert run_handler(http, {}, no_exec, ours, pod_pids=me) == (
        True, f"answered at 127.0.0.1, not at the pod IP {ours}")
    assert run_handler({"tcpSocket": {"port": http_server}}, {}, no_exec, ours, pod_pids=me)[0]
    # a container once answered at its pod IP gets no second try: another pod's server on
    # 127.0.0.1 and the same port must not keep a dead one alive
    ok, msg = run_handler({"tcpSocket": {"port": http_server}}, {}, no_exec, ours,
                          fallback=False)
    assert not ok and "at 127.0.0.1" not in msg, msg
    ok, msg = run_handler({"tcpSocket": {"port": http_server, "host": ours}}, {}, no_exec, ours)
    assert not ok and "at 127.0.0.1" not in msg, msg


def test_a_pid_lookup_podman_does_not_answer_fails_the_probe_not_the_pod() -> None:
    """`podman container inspect` of the container's pid timing out (podman busy on its
    storage lock) or not starting (OSError) on the 127.0.0.1 fallback: that probe fails,
    naming the listener as not the pod's, and the next call asks again. Before, the
    exception escaped the probe into the pod's worker, which SIGKILLs every container and
    marks the pod Failed (second review)."""
    class Hung:
        calls = 0

        def run(self, *args: str, timeout: float = 30) -> Any:
            Hung.calls += 1
            if Hung.calls == 1:
                raise subprocess.TimeoutExpired(["podman", *args], timeout)
            raise OSError(11, "Resource temporarily unavailable")

    from voicetrack_local.nodeagent.podman import PodmanContainer
    c = PodmanContainer("c", {"name": "c"}, False, podman=Hung(), cname="k8s_c",  # type: ignore[arg-type]
                        pid=os.getpid() + 4_000_000)  # no such process: not this listener's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        spec = {"tcpSocket": {"port": s.getsockname()[1]}}
        st = ProbeState("readinessProbe", spec, 0.0)
        ok, msg = run_probe(st, spec, lambda cmd, t: 0, "127.64.0.9", c.main_pids)
        assert not ok and "not by a process of this pod" in msg, msg
        ok, msg = run_probe(st, spec, lambda cmd, t: 0, "127.64.0.9", c.main_pids)
        assert not ok and Hung.calls == 2 and c.container_pid is None
