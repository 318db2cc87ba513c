"""A loopback HTTP server in the Kubernetes API server's place, for the recorder's unit
tests: the client's real request path, the answers the test chooses."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[str, str], tuple[int, dict[str, Any]]]
"""(method, path) → (HTTP status, JSON document) of one request."""


def status_doc(code: int) -> dict[str, Any]:
    """The API server's `Status` document of a failure with HTTP status `code`."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "message": f"answer {code}"}


@contextmanager
def loopback_api(answer: Answer) -> Iterator[tuple[list[str], str]]:
    """Serve on a loopback port until the block ends, each GET and POST answered by
    `answer` (a request body is read and ignored). Yields (the requests seen, as
    `METHOD path`, in order; the server's URL, `http://127.0.0.1:<port>`)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, doc = answer(self.command, self.path)
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield seen, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
