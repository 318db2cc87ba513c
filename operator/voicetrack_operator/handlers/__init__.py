"""kopf handler modules, one per resource; importing this package registers them all."""

from voicetrack_operator.handlers import chunk, index, lifecycle, session

__all__ = ["chunk", "index", "lifecycle", "session"]
