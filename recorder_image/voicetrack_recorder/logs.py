"""Logging set-up for the recorder's commands (`run`, `bot`), secrets kept out at DEBUG.

With VOICETRACK_LOG_LEVEL=DEBUG, discord.py 2.7.1 logs whole payloads at DEBUG: its voice
websocket every frame sent and received (`discord.gateway`: op 0 IDENTIFY and op 7 RESUME
carry the voice `token`, op 4 SESSION_DESCRIPTION the transport `secret_key`), its main
gateway every dispatch (VOICE_SERVER_UPDATE's voice token, INTERACTION_CREATE's
interaction token), its HTTP client and webhooks every URL (interaction and webhook tokens
are path segments: `discord.http`, `discord.webhook`). Those loggers are held at INFO (or
the root's level when that is higher); their INFO and above pass as before.
"""

from __future__ import annotations

import logging
import sys

SECRET_BEARING_LOGGERS = ("discord.gateway", "discord.http", "discord.webhook",
                          "discord.voice_state")
"""discord.py loggers whose DEBUG records carry tokens or keys (see the module docstring)."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at `level` (a logging level name: DEBUG, INFO...), with the loggers of
    SECRET_BEARING_LOGGERS held at INFO or above. Raises ValueError for an unknown
    level name (as `logging.basicConfig` does)."""
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)
    threshold = max(logging.INFO, logging.getLogger().level)
    for name in SECRET_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(threshold)
