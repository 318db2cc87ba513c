"""kopf handler modules, one per resource; importing this package registers them all."""

from voicetrack_operator.handlers import chunk, lifecycle, session

__all__ = ["chunk", "lifecycle", "session"]
