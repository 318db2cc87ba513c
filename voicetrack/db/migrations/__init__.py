"""Alembic migrations of the voicetrack database (env.py, versions/)."""
