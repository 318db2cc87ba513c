"""A local Discord for the harness: REST v10, gateway v10, voice gateway v8 with DAVE (the
server as MLS external sender) and a UDP media relay, over TLS with the harness CA.

Start it with `python -m voicetrack_local.discord --state-dir DIR` or `LocalDiscord` from
`server.py`; clients read `DIR/discord.json`. See docs/local-discord.md.
"""
