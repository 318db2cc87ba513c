"""Alembic revisions: 0001 old shape, 0002 two-tier, 0003 recordings tracks, 0004 heartbeats."""
