"""`voicetrack-operator`: run the kopf operator cluster-wide.

Liveness and readiness on `http://$VOICETRACK_LISTEN_ADDRESS:$VOICETRACK_HEALTH_PORT/healthz`
(kopf's probes, including a database heartbeat); metrics on `$VOICETRACK_METRICS_PORT/metrics`
at the same address. The address defaults to 127.0.0.1; in a cluster the chart sets 0.0.0.0
so the kubelet's probes and Prometheus reach them.
"""

from __future__ import annotations

import logging
import os
import sys

import kopf


def run() -> None:
    """Entry point of the console script; stops cleanly on SIGTERM/SIGINT."""
    import voicetrack_operator.handlers  # noqa: F401  (registers every handler)

    logging.basicConfig(level=os.environ.get("VOICETRACK_LOG_LEVEL", "INFO"),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = int(os.environ.get("VOICETRACK_HEALTH_PORT", "8080"))
    host = os.environ.get("VOICETRACK_LISTEN_ADDRESS", "127.0.0.1")
    kopf.run(clusterwide=True, standalone=True,
             liveness_endpoint=f"http://{host}:{port}/healthz" if port else None)


if __name__ == "__main__":
    run()
