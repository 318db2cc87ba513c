"""Prometheus metrics of the operator, served on `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The operator's metrics in their own registry (one per Context, so tests can make
    several without clashing)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.chunks = Counter("voicetrack_chunks_total", "Chunks by final transcode status",
                              ["status"], registry=r)
        self.chunk_latency = Histogram(
            "voicetrack_chunk_done_seconds", "Chunk sealed (created) to transcode done",
            buckets=(1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300), registry=r)
        self.transcode_retries = Counter(
            "voicetrack_transcode_retries_total",
            "Transcoder Jobs made again after running out of retries on a transient fault",
            registry=r)
        self.promotions = Counter("voicetrack_promotions_total", "Promotions by result",
                                  ["result"], registry=r)
        self.db_errors = Counter("voicetrack_db_errors_total", "SQL writes that failed",
                                 registry=r)
        self.sessions = Gauge("voicetrack_sessions", "Sessions by state", ["state"],
                              registry=r)
        self.webhook_deliveries = Counter(
            "voicetrack_webhook_deliveries_total",
            "Completion webhook deliveries by outcome (queued, delivered, failed, abandoned)",
            ["outcome"], registry=r)
        self.webhook_attempts = Counter(
            "voicetrack_webhook_attempts_total",
            "Completion webhook POST attempts by result (success, error)", ["result"],
            registry=r)
        self.orphans_kept = Gauge(
            "voicetrack_orphans_kept",
            "Temporary data of meetings no session owns that the last orphan sweep kept "
            "instead of deleting, by kind (chunk_objects, temp_rows) and reason "
            "(services.janitor: unknown_meeting, not_ended, recently_ended, not_promoted, "
            "not_in_plan; temp_rows: not_promoted)",
            ["kind", "reason"], registry=r)
        self.orphans_deleted = Counter(
            "voicetrack_orphans_deleted_total",
            "Temporary data of promoted meetings the orphan sweep deleted, by kind "
            "(chunk_objects, temp_rows)", ["kind"], registry=r)
