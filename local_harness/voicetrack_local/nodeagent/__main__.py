"""``python -m voicetrack_local.nodeagent --state-dir DIR``: run the node agent."""

from voicetrack_local.nodeagent.agent import main

main()
