"""Two-tier SQL storage (DESIGN.md, "Storage"); see docs/database.md.

- `voicetrack.db.schema`: typed models (`Meeting`, `TempRecording`, `Recording`, `Heartbeat`).
- `voicetrack.db.engine`: `create_engine(url)`, `VOICETRACK_DATABASE_URL`.
- `voicetrack.db.store`: `RecordingStore(session)`, the statements; never commits. It joins
  `meetings`, `temp_recordings`, `recordings` and `heartbeats` (one store per table, on
  `base.StoreBase`), with the input checks in `checks`.
- `voicetrack.db.service`: `RecordingService(engine)`, one transaction per method, typed errors.
- `voicetrack.db.migrate`: Alembic, programmatic (`upgrade_head(url)`) and `python -m`.
"""
