"""The Voicetrack Discord bot: `/record start|stop|pause|resume|status` manage the
guild's RecordingSession through the Kubernetes API (docs/bot.md).

- `sessions.BotSessions`: the service (one namespace, one session per guild).
- `embeds`: pure embed builders from a session object.
- `app`: discord.py commands, permission policy, the bot class.
"""
