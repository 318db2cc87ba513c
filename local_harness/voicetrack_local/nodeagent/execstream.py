"""``kubectl exec`` on the local node: the kubelet's ``/exec/<ns>/<pod>/<container>`` over
WebSocket with the ``v5.channel.k8s.io`` (or ``v4.channel.k8s.io``) remote-command
subprotocol.

Which protocol reaches the kubelet: in v1.36 the API server proxies a client's WebSocket
exec request unchanged to a node whose ``status.declaredFeatures`` holds
``ExtendWebSocketsToKubelet`` (feature gate ``ExtendWebSocketsToKubelet``, beta and on in
1.36; ``pkg/registry/core/pod/rest/subresources.go`` ``checkNodeSupportsWebsockets``;
KEP-4006 "v1.36 Extend WebSockets to Kubelet"); for other nodes it translates the stream to
SPDY/3.1.  The node agent declares that feature, so it only needs WebSocket (RFC 6455):
kubectl ≥ 1.30 speaks ``v5.channel.k8s.io``, the Python client ``v4.channel.k8s.io``.  A
legacy SPDY client (``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false``) is refused.

Channel protocol (``k8s.io/apimachinery/pkg/util/remotecommand``): every binary message
starts with its channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (a ``metav1.Status``
JSON once the command ends: ``Success``, or ``Failure`` with reason ``NonZeroExitCode`` and
a cause ``ExitCode`` holding the code), 4 resize; v5 adds 255 ``[255, channel]``: that
channel is closed (the client's end of stdin).  TTYs are not supported (no resize).

The frame and status helpers are pure; :func:`serve_exec` runs the command.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
import subprocess
import threading
from collections.abc import Callable
from io import BufferedIOBase
from typing import IO

#: the RFC 6455 handshake GUID
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: subprotocols served, best first
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: the node feature that makes the API server proxy WebSocket exec to us
NODE_FEATURE = "ExtendWebSocketsToKubelet"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def choose_protocol(offered: str | None) -> str | None:
    """The subprotocol to answer for a ``Sec-WebSocket-Protocol`` header: the first of
    :data:`PROTOCOLS` the client offers, None when it offers none of them."""
    names = [p.strip() for p in (offered or "").split(",")]
    return next((p for p in PROTOCOLS if p in names), None)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (what a server sends; RFC 6455 §5.2)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def read_frame(read: Callable[[int], bytes]) -> tuple[bool, int, bytes]:
    """Read one frame with ``read(n)`` (exactly n bytes, b"" at end of stream); returns
    ``(fin, opcode, unmasked payload)``.

    Raises:
        EOFError: the stream ended inside a frame."""

    def exactly(n: int) -> bytes:
        data = read(n) if n else b""
        if len(data) != n:
            raise EOFError("websocket stream ended")
        return data

    b0, b1 = exactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exactly(8))[0]
    mask = exactly(4) if b1 & 0x80 else b""
    data = exactly(n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bool(b0 & 0x80), b0 & 0x0F, data


def exit_status(code: int) -> bytes:
    """The error channel's ``metav1.Status`` for a command that exited with ``code`` (the
    kubelet's, ``pkg/kubelet/cri/streaming/remotecommand/exec.go``)."""
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }).encode()  # fmt: skip


def error_status(message: str) -> bytes:
    """The error channel's ``metav1.Status`` for a command that could not run."""
    return json.dumps({"metadata": {}, "status": "Failure", "message": message,
                       "reason": "InternalError", "code": 500}).encode()  # fmt: skip


def serve_exec(
    rfile: BufferedIOBase,
    wfile: BufferedIOBase,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    *,
    stdin: bool,
) -> int | None:
    """Run ``argv`` and stream it over the upgraded connection (``rfile``/``wfile``):
    stdout and stderr as channel 1 and 2 messages, stdin from channel 0 (closed by an
    ``[255, 0]`` message in v5, or when the client closes); then the exit status on channel 3
    and a close frame.  Returns the exit code, None when the command could not start."""
    lock = threading.Lock()

    def send(opcode: int, payload: bytes) -> None:
        with lock, contextlib.suppress(OSError, ValueError):
            wfile.write(encode_frame(opcode, payload))
            wfile.flush()

    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)  # fmt: skip
    except OSError as e:
        send(OP_BINARY, bytes([ERROR]) + error_status(f"exec {argv[0]!r}: {e}"))
        send(OP_CLOSE, struct.pack("!H", 1000))
        return None

    def pump(src: IO[bytes], channel: int) -> None:
        for chunk in iter(lambda: src.read1(65536), b""):  # type: ignore[attr-defined]
            send(OP_BINARY, bytes([channel]) + chunk)

    pumps = [threading.Thread(target=pump, args=(proc.stdout, STDOUT), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, STDERR), daemon=True)]
    for t in pumps:
        t.start()

    def close_stdin() -> None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def receive() -> None:
        try:
            while True:
                _, op, data = read_frame(rfile.read)
                if op == OP_CLOSE:
                    break
                if op == OP_PING:
                    send(OP_PONG, data)
                elif op in (OP_BINARY, OP_TEXT, OP_CONT) and data:
                    if data[0] == STDIN and proc.stdin is not None:
                        with contextlib.suppress(OSError):
                            proc.stdin.write(data[1:])
                            proc.stdin.flush()
                    elif data[0] == CLOSE and data[1:2] == bytes([STDIN]):
                        close_stdin()
        except (EOFError, OSError, ValueError):
            pass
        close_stdin()

    threading.Thread(target=receive, daemon=True).start()
    code = proc.wait()
    for t in pumps:
        t.join(timeout=5)
    rc = code if code >= 0 else 128 - code
    send(OP_BINARY, bytes([ERROR]) + exit_status(rc))
    send(OP_CLOSE, struct.pack("!H", 1000))
    return rc
