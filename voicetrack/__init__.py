"""Voicetrack's shared contracts: resource names and models, S3 key layout, raw audio
format, SQL storage, and the local cluster. Components import this package; it imports
none of them (and never kopf), so the recorder and transcoder images stay light."""

__version__ = "0.1.0"
