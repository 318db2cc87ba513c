"""`voicetrack-web`: serve the web page with uvicorn.

Listens on `VOICETRACK_WEB_HOST` (default 0.0.0.0) : `VOICETRACK_WEB_PORT` (default 8080);
the rest of the settings are `WebSettings.from_env()`'s. Behind an Ingress, uvicorn trusts
`X-Forwarded-*` from `VOICETRACK_WEB_FORWARDED_ALLOW_IPS` (default 127.0.0.1).
Exits 2 with a one-line message when a setting is missing or bad.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from voicetrack_web.app import create_app
from voicetrack_web.settings import WebSettings


def run() -> None:
    """The console script's entry point."""
    try:
        settings = WebSettings.from_env()
    except (RuntimeError, ValueError) as exc:
        print(f"voicetrack-web: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    uvicorn.run(create_app(settings), host=os.environ.get("VOICETRACK_WEB_HOST", "0.0.0.0"),
                port=int(os.environ.get("VOICETRACK_WEB_PORT", "8080")),
                proxy_headers=True,
                forwarded_allow_ips=os.environ.get("VOICETRACK_WEB_FORWARDED_ALLOW_IPS",
                                                   "127.0.0.1"),
                access_log=False, log_level=os.environ.get("VOICETRACK_LOG_LEVEL",
                                                           "info").lower())


if __name__ == "__main__":
    run()
