"""The API server is SIGKILLed and restarted while a `files` session records, with the
whole stack (operator, node agent, recorder pod): the recorder rides it out — no restart
(restartCount 0), no gap, every chunk done."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.disruptive.test_recorder_outages import kill_apiserver, start_apiserver
from tests.e2e.test_main_job import get, session_yaml, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack_local.cluster import LocalCluster

pytestmark = pytest.mark.disruptive

USER = "400000000000000011"
AUDIO_MS = 16_000


def test_api_server_restart_mid_session_neither_restarts_the_recorder_nor_leaves_a_gap(
        stack: Stack, cluster: LocalCluster, e2e_namespace: str) -> None:
    ns = e2e_namespace
    spk = Speaker(user_id=USER, f0=170.0, talks=[(500, 15_500)], markers=[])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
    doc = json.loads(session_yaml(ns, "apirestart", [key, key, key]))
    doc["spec"]["source"]["speakers"] = doc["spec"]["source"]["speakers"][:1]
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def items() -> list[dict[str, Any]]:
        out = stack.kubectl("-n", ns, "get", "recchunk", "-o", "json", check=False)
        return json.loads(out.stdout)["items"] if out.returncode == 0 else []

    wait_for("the first chunk", lambda: len(items()) >= 1, 60)
    old = kill_apiserver(cluster)
    time.sleep(4)  # a chunk is sealed while the API server is away
    start_apiserver(cluster, old)

    def all_done() -> bool:
        st = (get(stack, ns, "recsess", "apirestart") or {}).get("status", {})
        chunks = items()
        return st.get("recordedSeconds", 0) * 1000 >= AUDIO_MS - 2000 and bool(chunks) and all(
            (i.get("status") or {}).get("transcodeStatus") == "done" for i in chunks)

    wait_for("every chunk done", all_done, 150, every_s=1)
    pod = get(stack, ns, "pod", "apirestart-rec")
    assert pod is not None
    assert [c.get("restartCount", 0) for c in pod["status"]["containerStatuses"]] == [0]
    specs = sorted((i["spec"] for i in items()), key=lambda s: int(s["index"]))
    assert [s["index"] for s in specs] == list(range(len(specs)))
    assert [s.get("gap") for s in specs] == [None] * len(specs)
    assert all(a["endMs"] == b["startMs"] for a, b in itertools.pairwise(specs))
