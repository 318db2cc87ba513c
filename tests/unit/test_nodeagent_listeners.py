"""nodeagent.listeners: who holds the socket that answers at 127.0.0.1:<port>, from
/proc/net/tcp*, /proc/<pid>/stat and /proc/<pid>/fd (fixtures and real processes)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from voicetrack_local.nodeagent.listeners import (
    Listener,
    loopback_listener,
    loopback_owner_error,
    parse_listeners,
    parse_stat,
    pod_processes,
    socket_inodes,
)
from voicetrack_local.nodeagent.probes import ProbeState, run_handler, run_probe

pytestmark = pytest.mark.unit

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode"
)


def _line(sl: int, local: str, st: str, inode: int) -> str:
    """One /proc/net/tcp* line as the kernel writes it (proc(5)), with ``local``, state
    ``st`` and ``inode``."""
    remote = "0" * (len(local) - 5) + ":0000"
    tail = f"{st} 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0 100 0 0 10 0"
    return f"{sl:4}: {local} {remote} {tail}"


TCP = "\n".join(
    [
        HEADER,
        _line(0, "0100007F:1F90", "0A", 111),  # 127.0.0.1:8080
        _line(1, "0A094081:1F90", "0A", 222),  # 129.64.9.10:8080
        _line(2, "00000000:1F91", "0A", 333),  # 0.0.0.0:8081
        _line(3, "0100007F:1F90", "01", 444),  # ESTABLISHED, not a listener
    ]
)
V6_ANY, V6_MAPPED_LO = "0" * 32, "0000000000000000FFFF00000100007F"
TCP6 = "\n".join(
    [
        HEADER,
        _line(0, f"{V6_ANY}:1F92", "0A", 555),  # [::]:8082
        _line(1, f"{V6_MAPPED_LO}:1F93", "0A", 666),  # [::ffff:127.0.0.1]:8083
        _line(2, f"{V6_ANY}:1F93", "0A", 777),  # [::]:8083
    ]
)


def test_parses_listen_sockets_of_proc_net_tcp_and_tcp6() -> None:
    assert parse_listeners(TCP) == [
        Listener("127.0.0.1", 8080, 111),
        Listener("129.64.9.10", 8080, 222),  # 0A094081: little-endian bytes of 129.64.9.10
        Listener("0.0.0.0", 8081, 333),
    ]  # the ESTABLISHED (01) line is not a listener
    assert parse_listeners(TCP6) == [
        Listener("::", 8082, 555),
        Listener("::ffff:127.0.0.1", 8083, 666),
        Listener("::", 8083, 777),
    ]
    assert parse_listeners("header only\n  0: garbage\n") == []


def test_the_listener_reaching_127_0_0_1_is_the_most_specific_one() -> None:
    found = parse_listeners(TCP) + parse_listeners(TCP6)
    assert loopback_listener(found, 8080) == ("127.0.0.1", {111})  # not the other address
    assert loopback_listener(found, 8081) == ("0.0.0.0", {333})
    assert loopback_listener(found, 8082) == ("::", {555})
    assert loopback_listener(found, 8083) == ("::ffff:127.0.0.1", {666})
    assert loopback_listener(found, 9) is None


def test_stat_and_fd_links() -> None:
    assert parse_stat("42 (a (b) c) S 7 42 40 0 -1") == ("a (b) c", 7, 40)
    assert socket_inodes(["socket:[12]", "pipe:[13]", "/dev/null", "socket:[14]"]) == {12, 14}


def _proc(root: Path, pid: int, comm: str, ppid: int, session: int, socks: list[int]) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {session} 0 -1\n")
    for i, ino in enumerate(socks):
        os.symlink(f"socket:[{ino}]", d / "fd" / str(i))


def test_owner_of_the_loopback_listener_in_a_proc_fixture(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "net" / "tcp6").write_text(TCP6)
    _proc(tmp_path, 100, "main", 1, 100, [])
    _proc(tmp_path, 101, "worker", 100, 100, [111])  # a child of the pod's main process
    _proc(tmp_path, 102, "daemon", 1, 100, [333])  # forked away, still in its session
    _proc(tmp_path, 200, "other pod", 1, 200, [555])
    assert pod_processes([100], tmp_path) == {100, 101, 102}
    assert loopback_owner_error(8080, [100], tmp_path) is None
    assert loopback_owner_error(8081, [100], tmp_path) is None
    assert loopback_owner_error(8082, [100], tmp_path) == (
        "[::]:8082 (answering 127.0.0.1) is held by pid 200 (other pod), not by a process of "
        "this pod"
    )
    assert loopback_owner_error(8080, [200], tmp_path) == (
        "127.0.0.1:8080 is held by pid 101 (worker), not by a process of this pod"
    )
    assert "not readable" in str(loopback_owner_error(8083, [100], tmp_path))
    assert loopback_owner_error(9, [100], tmp_path) == "nothing listens at 127.0.0.1:9"


LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
)
# a pod's main process whose child does the listening
PARENT = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {LISTEN!r}])\n"


@pytest.fixture
def spawn() -> Iterator[Callable[[str], tuple[int, int]]]:
    """Start ``python -c code`` in a session of its own; its pid and the port it prints."""
    procs: list[subprocess.Popen[str]] = []

    def run(code: str) -> tuple[int, int]:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
        procs.append(p)
        assert p.stdout is not None
        return p.pid, int(p.stdout.readline())

    yield run
    for p in procs:
        os.killpg(p.pid, 9)
        p.wait()


def test_real_listeners_of_a_pods_child_and_of_an_unrelated_process(
    spawn: Callable[[str], tuple[int, int]],
) -> None:
    """(main pid, port) of a process whose child listens vs of another process listening."""
    pod, pod_port = spawn(PARENT)
    other, other_port = spawn(LISTEN)
    assert loopback_owner_error(pod_port, [pod]) is None
    assert loopback_owner_error(other_port, [other]) is None
    msg = loopback_owner_error(other_port, [pod])
    assert msg is not None and msg.startswith(f"127.0.0.1:{other_port} is held by pid {other} ")
    msg = loopback_owner_error(pod_port, [other])
    assert msg is not None and "not by a process of this pod" in msg, msg


def _no_exec(cmd: list[str], timeout: float) -> int:
    raise AssertionError("not an exec probe")


def test_probe_fallback_counts_only_for_the_pods_own_listener_at_127_0_0_1(
    spawn: Callable[[str], tuple[int, int]],
) -> None:
    """A pod that never listens at its pod IP is not kept alive (liveness) or ready by
    another process listening on 127.0.0.1 and the same port; its own process bound to
    127.0.0.1 still passes through the fallback."""
    pod, pod_port = spawn(PARENT)  # this pod: its main process's child binds 127.0.0.1
    other, other_port = spawn(LISTEN)  # another pod (or hostNetwork pod) on 127.0.0.1
    ip = "127.64.9.12"  # this pod's IP: nothing listens there
    live = ProbeState("livenessProbe", {"tcpSocket": {"port": other_port}}, 0.0)
    # no process of the pod known: the fallback proves nothing
    ok, msg = run_probe(live, {}, _no_exec, ip)
    assert not ok and f"pid {other}" in msg and "Connection refused" in msg, msg
    verdicts = []
    for i in range(3):
        ok, msg = run_probe(live, {}, _no_exec, ip, lambda: [pod])
        assert not ok and f"127.0.0.1:{other_port} is held by pid {other} (python" in msg, msg
        verdicts.append(live.record(ok, float(i)))
    assert verdicts[-1] is False  # failureThreshold reached: the container is restarted
    # the pod's own listener on 127.0.0.1: passes, says so, and is not "answered at the IP"
    own = ProbeState("readinessProbe", {"tcpSocket": {"port": pod_port}}, 0.0)
    ok, msg = run_probe(own, {}, _no_exec, ip, lambda: [pod])
    assert (ok, msg) == (True, f"answered at 127.0.0.1, not at the pod IP {ip}")
    assert not own.pod_ip_answered
    ok, msg = run_probe(own, {}, _no_exec, ip, lambda: [other])
    assert not ok and f"pid {pod}" not in msg and "not by a process of this pod" in msg, msg
    # httpGet the same way: a server of this test process answers for it, not for the pod
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        spec = {"httpGet": {"path": "/", "port": srv.server_address[1]}}
        ok, msg = run_handler(spec, {}, _no_exec, ip, pod_pids=lambda: [pod])
        assert not ok and f"pid {os.getpid()} " in msg, msg
        ok, msg = run_handler(spec, {}, _no_exec, ip, pod_pids=lambda: [os.getpid()])
        assert not ok and "statuscode: 501" in msg, msg  # answered, by the owner: its status
    finally:
        srv.shutdown()
        srv.server_close()


def test_main_pids_of_a_process_and_of_a_podman_container() -> None:
    """The process runtime's main pid is its process; podman's is the container's
    ``State.Pid`` (looked up once a run, once the container runs) and ``podman run``'s."""
    from voicetrack_local.nodeagent.container import Container
    from voicetrack_local.nodeagent.podman import Podman, PodmanContainer

    calls: list[tuple[str, ...]] = []
    answers = ["0\n", "4242\n"]

    class FakePodman:
        def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
            calls.append(args)
            return subprocess.CompletedProcess(args, 0, answers.pop(0) if answers else "", "")

    p = Container("c", {}, False)
    assert p.main_pids() == []
    p.pid = 17
    assert p.main_pids() == [17]
    fake: Podman = FakePodman()  # type: ignore[assignment]
    c = PodmanContainer("c", {}, False, podman=fake, cname="k8s_c")
    c.pid = 17
    assert c.main_pids() == [17]  # created, not running yet: State.Pid 0
    assert c.main_pids() == [17, 4242] and c.main_pids() == [17, 4242]
    assert calls == [("container", "inspect", "--format", "{{.State.Pid}}", "k8s_c")] * 2
    c.release()
    assert c.container_pid is None and c.main_pids() == []
