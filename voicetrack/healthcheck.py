"""`voicetrack check`: is an installed Voicetrack reachable? The chart's `helm test` pod runs
it in the operator image with the operator's settings.

Three checks, each a `CheckResult`:

- operator: its `/healthz` (kopf's probes) answers 200 and every probe in the JSON body is
  "ok" (the operator's `database` probe writes a heartbeat row, so this also covers an
  SQLite database only the operator can open). The URL is given, or found from the ready
  pods matching a label selector (their `status.podIP`, through the in-cluster API);
- database: the URL's database answers and is at the packaged Alembic head (skipped for an
  SQLite file: that file lives on the operator's volume, checked by its probe);
- s3: the bucket can be listed with the configured keys, or the AWS credential chain's
  when there are none (a prefix with no objects, so the answer is small; nothing is
  written); the line names the credential source used.

Settings are the operator's variables (VOICETRACK_DATABASE_URL, VOICETRACK_S3_*); imports of
SQLAlchemy and the Kubernetes client happen only inside the check that needs them, so the
command stays usable in an image without them for the checks that do not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Annotated

import typer

from voicetrack.errors import NotFoundError, VoicetrackError
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.s3credentials import credentials_source

PROBE_PREFIX = "voicetrack-healthcheck/"
"""The S3 prefix listed by the s3 check (no object is ever written under it)."""


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `name` (operator, database, s3), `ok`, a one-line `detail`."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """`ok   <name>: <detail>` or `FAIL <name>: <detail>`."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_operator_url(url: str, timeout_s: float = 5.0) -> CheckResult:
    """GET `url` (an operator's /healthz): ok when it answers 200 with a JSON object whose
    values are all "ok" (kopf's probe results). Never raises for a failure of the server;
    the detail names it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status, body = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return CheckResult("operator", False, f"{url}: HTTP {err.code}")
    except (OSError, ValueError) as err:
        return CheckResult("operator", False, f"{url}: {err}")
    try:
        probes = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError:
        return CheckResult("operator", False, f"{url}: not JSON: {body[:200]!r}")
    if not isinstance(probes, dict):
        return CheckResult("operator", False, f"{url}: not a JSON object: {body[:200]!r}")
    bad = {k: v for k, v in probes.items() if v != "ok"}
    if status != 200 or bad:
        return CheckResult("operator", False, f"{url}: HTTP {status}, probes {bad or probes}")
    return CheckResult("operator", True, f"{url}: probes {probes or 'none'}")


def operator_urls(namespace: str, selector: str, port: int, path: str = "/healthz"
                  ) -> list[str]:
    """The /healthz URLs of the Ready pods matching `selector` in `namespace`, from the
    in-cluster API (the pod's ServiceAccount needs `list` on pods there). Raises
    kubernetes' ConfigException outside a pod, ApiException when the API refuses."""
    from kubernetes import client, config  # the operator image's client; only this check

    config.load_incluster_config()
    with client.ApiClient() as api:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector)
    urls = []
    for pod in pods.items:
        conditions = (pod.status.conditions if pod.status else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        ip = pod.status.pod_ip if pod.status else None
        if ready and ip and not (pod.metadata and pod.metadata.deletion_timestamp):
            host = f"[{ip}]" if ":" in ip else ip
            urls.append(f"http://{host}:{port}{path}")
    return urls


def check_database(url: str) -> CheckResult:
    """Connect to `url` (an async or sync SQLAlchemy URL) and compare its Alembic revision
    with the packaged head. An SQLite URL is not opened (ok, detail says why)."""
    if url.startswith("sqlite"):
        return CheckResult("database", True, "SQLite on the operator's volume: checked by "
                           "the operator's database probe")  # fmt: skip
    from voicetrack.db.engine import parse_url
    from voicetrack.db.migrate import current_revision, head_revision

    safe = parse_url(url).render_as_string(hide_password=True)
    try:
        current, head = current_revision(url), head_revision()
    except VoicetrackError as err:
        return CheckResult("database", False, f"{safe}: {err}")
    if current != head:
        return CheckResult("database", False, f"{safe}: at revision {current}, not {head}")
    return CheckResult("database", True, f"{safe}: at Alembic head {head}")


def check_s3(settings: S3Settings) -> CheckResult:
    """List `PROBE_PREFIX` in the bucket with `settings`' credentials (its keys, else the
    AWS chain's): ok when S3 answers (a missing bucket, refused or missing credentials or
    an unreachable endpoint fail, named in the detail). The detail names the credential
    source used."""
    where = f"{settings.endpoint} bucket {settings.bucket}"
    try:
        ObjectStore(settings).list_keys(PROBE_PREFIX)
        source = credentials_source(settings)
    except NotFoundError as err:
        return CheckResult("s3", False, f"{where}: no such bucket ({err})")
    except VoicetrackError as err:
        return CheckResult("s3", False, f"{where}: {err}")
    return CheckResult("s3", True, f"{where}: listed with credentials from {source}")


def check(
    operator_url: Annotated[list[str] | None, typer.Option(
        help="An operator /healthz URL (repeatable); default: found by --operator-selector.",
        envvar="VOICETRACK_CHECK_OPERATOR_URL")] = None,
    operator_selector: Annotated[str, typer.Option(
        help="Label selector of the operator pods (in --namespace), used without a URL.",
        envvar="VOICETRACK_CHECK_OPERATOR_SELECTOR")] = "",
    namespace: Annotated[str, typer.Option(
        help="The operator pods' namespace.", envvar="VOICETRACK_NAMESPACE")] = "default",
    health_port: Annotated[int, typer.Option(
        help="The operator's health port.", envvar="VOICETRACK_HEALTH_PORT")] = 8080,
    database_url: Annotated[str, typer.Option(
        help="The database to check (empty: skip).", envvar="VOICETRACK_DATABASE_URL")] = "",
    s3: Annotated[bool, typer.Option(
        help="Check the S3 bucket with VOICETRACK_S3_* settings.")] = True,
) -> None:
    """Check the operator's /healthz, the database and the S3 bucket; print one line per
    check and exit 1 when any fails."""
    results: list[CheckResult] = []
    urls = list(operator_url or [])
    if not urls and operator_selector:
        try:
            urls = operator_urls(namespace, operator_selector, health_port)
        except Exception as err:  # kubernetes' config and API errors alike
            results.append(CheckResult("operator", False, f"finding pods: {err}"))
        else:
            if not urls:
                results.append(CheckResult("operator", False, f"no ready pod matches "
                                           f"{operator_selector!r} in {namespace}"))
    results.extend(check_operator_url(u) for u in urls)
    if database_url:
        results.append(check_database(database_url))
    if s3:
        try:
            settings = S3Settings.from_env()
        except RuntimeError as err:
            results.append(CheckResult("s3", False, str(err)))
        else:
            results.append(check_s3(settings))
    for r in results:
        typer.echo(r.line())
    if not results:
        typer.echo("FAIL nothing to check", err=True)
        raise typer.Exit(1)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
