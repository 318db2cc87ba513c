"""`voicetrack-operator`: run the kopf operator cluster-wide.

Liveness and readiness on `http://$VOICETRACK_LISTEN_ADDRESS:$VOICETRACK_HEALTH_PORT/healthz`
(kopf's probes, including a database heartbeat); metrics on `$VOICETRACK_METRICS_PORT/metrics`
at the same address. The address defaults to 127.0.0.1; in a cluster the chart sets 0.0.0.0
so the kubelet's probes and Prometheus reach them.

`VOICETRACK_NAMESPACES`: comma-separated kopf namespace patterns to serve (globs, `!` to
exclude, e.g. `team-*,!team-sandbox`); empty (the default) serves the whole cluster. Two
operators must never serve the same namespace. A served namespace is served until it is
gone, also while it terminates (`voicetrack_operator.namespacewatch`).

`VOICETRACK_PEERING`: the name of a ClusterKopfPeering; set, several replicas may run and
only one acts, the others take over within about `VOICETRACK_PEERING_LIFETIME_S` (10) s
when it dies (see `voicetrack_operator.leadership`). Unset: standalone, one replica.
"""

from __future__ import annotations

import logging
import os
import sys

import kopf


def run(argv: list[str] | None = None) -> None:
    """Entry point of the console script; stops cleanly on SIGTERM/SIGINT. Takes no
    arguments (settings are VOICETRACK_* variables, see `context.OperatorSettings`);
    `--help` prints this and exits 0, anything else is a usage error (exit 2)."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        from voicetrack_operator.context import OperatorSettings

        print(f"usage: voicetrack-operator\n{__doc__}\nSettings:\n"
              f"{OperatorSettings.__doc__}", file=sys.stdout if args[0] in ("-h", "--help")
              else sys.stderr)
        raise SystemExit(0 if args[0] in ("-h", "--help") else 2)
    import voicetrack_operator.handlers  # noqa: F401  (registers every handler)
    from voicetrack_operator.handlers import webhooks  # noqa: F401  (its worker, after them)
    from voicetrack_operator.leadership import Leadership, PeeringConfig
    from voicetrack_operator.namespacewatch import keep_terminating_namespaces

    logging.basicConfig(level=os.environ.get("VOICETRACK_LOG_LEVEL", "INFO"),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = int(os.environ.get("VOICETRACK_HEALTH_PORT", "8080"))
    host = os.environ.get("VOICETRACK_LISTEN_ADDRESS", "127.0.0.1")
    namespaces = watched_namespaces(os.environ.get("VOICETRACK_NAMESPACES", ""))
    if namespaces:  # kopf observes namespaces: keep each until it is gone (namespacewatch)
        keep_terminating_namespaces()
    peering = PeeringConfig.from_env()
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = peering.lifetime_s
    settings.peering.stealth = True  # no log line per keep-alive
    if peering.enabled:
        logging.getLogger(__name__).info(
            "peering %r as %s, priority %d, lifetime %d s", peering.name, peering.identity,
            peering.priority, peering.lifetime_s)
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, settings=settings,
             standalone=not peering.enabled, peering_name=peering.name or None,
             priority=peering.priority, identity=peering.identity,  # type: ignore[arg-type]  # kopf NewType,
             memo=kopf.Memo(leadership=Leadership(peering)),
             liveness_endpoint=f"http://{_url_host(host)}:{port}/healthz" if port else None)


def _url_host(host: str) -> str:
    """`host` as a URL's host: an IPv6 literal (the pod IP on a single-stack IPv6 cluster,
    through `$(POD_IP)`) in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def watched_namespaces(value: str) -> list[str]:
    """`VOICETRACK_NAMESPACES` (comma-separated globs, `!` before a glob to exclude) as
    kopf's namespace patterns; [] means the whole cluster. A namespace is served when it
    matches one inclusive glob (`*` when there are only exclusions) and no exclusive one.

    kopf serves a namespace that matches any one of its patterns, and reads a pattern of
    its own left to right (`kopf` `references.match_namespace`), so each inclusive glob
    becomes one pattern followed by every exclusion: `team-*,!team-sandbox` is
    ["team-*,!team-sandbox"]. Before, each glob was a pattern of its own, and the lone
    `!team-sandbox` (an implied `*` first) served every other namespace of the cluster."""
    globs = [p.strip() for p in value.split(",") if p.strip()]
    excluded = [g for g in globs if g.startswith("!")]
    included = [g for g in globs if not g.startswith("!")] or (["*"] if excluded else [])
    return [",".join([g, *excluded]) for g in included]


if __name__ == "__main__":
    run()
