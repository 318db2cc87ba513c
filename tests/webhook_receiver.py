"""A real webhook receiver for tests: an aiohttp server on a 127.0.0.1 socket, in a thread
of its own (so sync and async tests, and an operator in another process, can all call it).

It verifies each request's signature with the key it was given, the way docs/webhooks.md
tells receivers to (`verify_delivery`: the delivery id comes from the signed body), and
records every request. Every answer sets a cookie, so a sender that kept cookies would
send it back. Its answers follow a script: each request
takes the next `(status, delay_s)` or `(status, delay_s, body)` (sleep, then answer), and
`(200, 0)` once the script is spent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from voicetrack.errors import InvalidInputError
from voicetrack.webhooks import verify_delivery
from voicetrack_local.ports import free_port


@dataclass
class Received:
    """One request as it arrived: headers, raw body, when (Unix s), whether its
    signature verified (`error` says why not) and the signed delivery id."""

    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool
    error: str | None
    delivery: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


@dataclass
class Receiver:
    """Start with `start()`, stop with `stop()`; `url` is where it listens."""

    key: bytes
    script: list[tuple[int, float] | tuple[int, float, bytes]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answers(self, *script: tuple[int, float] | tuple[int, float, bytes]) -> None:
        """Replace the script of answers for the next requests: (status, delay in s) or
        (status, delay, body bytes)."""
        with self._lock:
            self.script = list(script)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery: str | None = None
        try:
            delivery = verify_delivery(self.key, body, request.headers, now=time.time())
            verified, error = True, None
        except InvalidInputError as err:
            verified, error = False, str(err)
        with self._lock:
            self.received.append(Received(dict(request.headers), body, time.time(), verified,
                                          error, delivery))
            status, delay, *given = self.script.pop(0) if self.script else (200, 0.0)
        if delay:
            await asyncio.sleep(delay)
        answer = web.Response(status=status, body=given[0]) if given else web.Response(
            status=status, text="ok" if status < 300 else f"no ({status})")
        answer.set_cookie("receiver-session", f"s{len(self.received)}")
        return answer

    def start(self) -> Receiver:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
