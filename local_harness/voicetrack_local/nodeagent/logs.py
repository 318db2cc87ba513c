"""The kubelet endpoint: ``GET /containerLogs/<ns>/<pod>/<container>`` (``follow``,
``tailLines``, ``previous``, ``limitBytes``) over HTTPS with a CA-signed certificate,
requiring a client certificate from the cluster CA (the apiserver's kubelet client cert), so
``kubectl logs`` works; ``GET /exec/<ns>/<pod>/<container>`` upgraded to WebSocket
(:mod:`.execstream`), so ``kubectl exec`` works; ``/healthz``; SPDY exec, attach,
port-forward and run answer 501."""

from __future__ import annotations

import base64
import contextlib
import logging
import ssl
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicetrack_local.nodeagent.execstream import accept_key, choose_protocol, serve_exec

if TYPE_CHECKING:
    from voicetrack_local.nodeagent.agent import NodeAgent
    from voicetrack_local.nodeagent.container import Container
    from voicetrack_local.nodeagent.worker import PodWorker

log = logging.getLogger("voicetrack.nodeagent")


class LogHandler(BaseHTTPRequestHandler):
    """One request to the kubelet endpoint (see the module docstring)."""

    server: LogServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("logs: " + format, *args)

    def _text(self, code: int, msg: str) -> None:
        data = msg.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        what = urllib.parse.urlsplit(self.path).path.strip("/").split("/")[0]
        self._text(
            501,
            f"{what} over SPDY is not supported by the voicetrack local node agent: it "
            "serves container logs and exec over WebSocket (kubectl's default since 1.30; "
            "unset KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false)",
        )

    do_PUT = do_POST

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._text(200, "ok")
            return
        if parts[0] == "exec" and self.headers.get("Upgrade", "").lower() == "websocket":
            self._exec(parts, q)
            return
        if parts[0] in ("exec", "attach", "portForward", "run"):
            self.do_POST()
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._text(404, f"the local node agent serves only /containerLogs (not {url.path})")
            return
        _, ns, pod, ctr = parts
        worker = self.server.agent.worker_for(ns, pod)
        if worker is None:
            self._text(404, f'pod "{pod}" not found in namespace "{ns}" on this node')
            return
        c = worker.find(ctr)
        if c is None:
            self._text(400, f"container {ctr} is not valid for pod {pod}")
            return
        previous = q.get("previous", ["false"])[0] == "true"
        path = self._log_path(worker, c, pod, previous)
        if path is None:
            return
        follow = q.get("follow", ["false"])[0] == "true" and not previous
        tail = int(q["tailLines"][0]) if "tailLines" in q else None
        limit = int(q["limitBytes"][0]) if "limitBytes" in q else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._stream(worker, c.name, path, follow, tail, limit)

    def _exec(self, parts: list[str], q: dict[str, list[str]]) -> None:
        """``kubectl exec``: run ``command`` in the container and stream it over WebSocket
        (:func:`~.execstream.serve_exec`); 400/404 before the upgrade when the container does
        not run, the request asks for a TTY or offers no channel subprotocol we speak."""
        if len(parts) != 4:
            self._text(404, "exec: expected /exec/<namespace>/<pod>/<container>")
            return
        _, ns, pod, ctr = parts
        worker = self.server.agent.worker_for(ns, pod)
        c = worker.find(ctr) if worker is not None else None
        if worker is None or c is None:
            self._text(404, f"container {ctr} of pod {ns}/{pod} is not on this node")
            return
        if not c.running:
            self._text(400, f'container "{ctr}" in pod "{pod}" is not running')
            return

        def flag(name: str) -> bool:
            return q.get(name, ["false"])[0] in ("1", "true", "True")

        if flag("tty"):
            self._text(400, "exec with a TTY is not supported by the local node agent")
            return
        protocol = choose_protocol(self.headers.get("Sec-WebSocket-Protocol"))
        key = self.headers.get("Sec-WebSocket-Key", "")
        command = q.get("command") or []
        if protocol is None or not command or len(base64.b64decode(key or "=")) != 16:
            self._text(400, "exec: a WebSocket request with subprotocol v5.channel.k8s.io or "
                       "v4.channel.k8s.io and a command is expected")  # fmt: skip
            return
        stdin = flag("stdin") or flag("input")
        argv, env = worker.exec_command(c, command, interactive=stdin)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        log.info("exec in %s/%s/%s: %s", ns, pod, ctr, command)
        serve_exec(self.rfile, self.wfile, argv, env, str(worker.dir), stdin=stdin)

    def _log_path(self, worker: PodWorker, c: Container, pod: str, previous: bool) -> Path | None:
        """The log file to serve: the current run's (the last run's while waiting to
        restart), or with ``previous`` the one before; None after answering 400."""
        if previous:
            if c.restart_count == 0:
                self._text(
                    400, f'previous terminated container "{c.name}" in pod "{pod}" not found'
                )
                return None
            path = worker.log_file(c.name, c.restart_count - 1)
        else:
            path = worker.log_file(c.name, c.restart_count)
            if not path.exists() and c.restart_count > 0 and "waiting" in c.state:
                path = worker.log_file(c.name, c.restart_count - 1)
        if not path.exists():
            reason = (c.state.get("waiting") or {}).get("reason", "ContainerCreating")
            self._text(400, f'container "{c.name}" in pod "{pod}" is waiting to start: {reason}')
            return None
        return path

    def _stream(
        self,
        worker: PodWorker,
        ctr: str,
        path: Path,
        follow: bool,
        tail: int | None,
        limit: int | None,
    ) -> None:
        """Send :func:`head_of_log` of ``path``; with ``follow`` keep sending what is
        appended (up to ``limit`` bytes in all) until that run of the container ends."""
        with path.open("rb") as fh:
            data = head_of_log(fh.read(), tail, limit)
            self.wfile.write(data)
            self.wfile.flush()
            sent = len(data)
            while follow and (limit is None or sent < limit):
                chunk = fh.read(65536)
                if chunk:
                    if limit is not None:
                        chunk = chunk[: limit - sent]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    continue
                cur = worker.find(ctr)
                if (
                    cur is None
                    or worker.gone
                    or worker.log_file(ctr, cur.restart_count) != path
                    or not cur.running
                ):
                    rest = fh.read()
                    if rest:
                        self.wfile.write(rest)
                    break
                time.sleep(0.2)


def head_of_log(data: bytes, tail: int | None, limit: int | None) -> bytes:
    """What a log request gets first: the last ``tail`` lines of ``data`` (all when None,
    nothing for 0), cut to ``limit`` bytes (``tailLines`` and ``limitBytes``)."""
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail > 0 else b""
    return data[:limit] if limit is not None else data


class LogServer(ThreadingHTTPServer):
    """The kubelet endpoint on ``127.0.0.1:port``: TLS with ``cert``/``key``, client
    certificates required and verified against ``ca``."""

    daemon_threads = True

    def __init__(self, agent: NodeAgent, port: int, cert: Path, key: Path, ca: Path) -> None:
        super().__init__(("127.0.0.1", port), LogHandler)
        self.agent = agent
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
