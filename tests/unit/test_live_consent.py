"""Consent and the audio so far, pure (docs/consent.md, "Promotion"): who is withheld
(`services.livechunks.withheld`), and that no live Job runs while someone is."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_operator_live import _service
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import PodSettings, SessionRef
from voicetrack_operator.jobs import build_live_job
from voicetrack_operator.services.livechunks import withheld
from voicetrack_operator.services.sessionview import SessionView

pytestmark = pytest.mark.unit

ANN, BOB, CAT = "111111111111111111", "222222222222222222", "333333333333333333"
GUILD, CHANNEL = "123456789012345678", "223456789012345678"


def spec(opt_out_users: tuple[str, ...] = ()) -> SessionSpec:
    return SessionSpec.model_validate({"guildId": GUILD, "channelId": CHANNEL,
                                       "optOutUserIds": list(opt_out_users)})


def chunk_obj(index: int, speakers: tuple[str, ...], opted: tuple[str, ...] = (),
              status: str = "done") -> dict[str, Any]:
    return {"spec": {"index": index, "tracks": [{"userId": u} for u in speakers],
                     "optedOut": [{"userId": u, "sinceMs": 0, "via": "role"}
                                  for u in opted]},
            "status": {"transcodeStatus": status}}


def test_withheld_is_opted_out_now_with_audio_in_a_chunk() -> None:
    spoke_then_out = [chunk_obj(0, (ANN, CAT)), chunk_obj(1, (ANN,), opted=(CAT,))]
    assert withheld(spec(), spoke_then_out) == {CAT}
    assert withheld(spec(), list(reversed(spoke_then_out))) == {CAT}  # by index
    # back in: the latest chunk no longer lists them
    assert withheld(spec(), [*spoke_then_out, chunk_obj(2, (ANN,))]) == set()
    # opted out from the start, never spoke: holds nothing back
    assert withheld(spec(), [chunk_obj(0, (ANN,), opted=(BOB,))]) == set()
    # /record optout after the last chunk: the spec says so first
    assert withheld(spec((ANN, BOB)), [chunk_obj(0, (ANN,))]) == {ANN}
    assert withheld(spec(), []) == set()


def test_withheld_follows_the_consecutive_chunks_and_stays_strict_past_a_hole() -> None:
    """Review rev-consent finding 4: the live audio took "opted out now" from the chunk of
    the highest index, past a hole included, while promotion goes by the last chunk of the
    consecutive run (`plan.consent_chunks`). A chunk past a hole that no longer listed a
    member the run's last chunk opts out served their audio live though the final tracks
    leave it out. Now either one opting out withholds. Failed before."""
    run = [chunk_obj(0, (ANN, CAT)), chunk_obj(1, (ANN,), opted=(CAT,))]
    assert withheld(spec(), [*run, chunk_obj(5, (ANN,))]) == {CAT}  # past a hole: in again
    assert withheld(spec(), [*run, chunk_obj(2, (ANN,))]) == set()  # consecutive: in again
    forged = chunk_obj(999_999, (), opted=(ANN,))
    assert withheld(spec(), [chunk_obj(0, (ANN, CAT)), forged]) == {ANN}  # strict: withheld


def _session(opt_out_users: tuple[str, ...], live: dict[str, Any] | None) -> SessionView:
    status: dict[str, Any] = {"state": "Recording"}
    if live is not None:
        status["live"] = live
    return SessionView.parse({
        "metadata": {"name": "standup", "namespace": "team", "uid": "0b6c-uid",
                     "creationTimestamp": "2026-12-02T20:00:00Z"},
        "spec": spec(opt_out_users).to_api(), "status": status})


async def test_no_live_job_while_withheld_and_the_running_one_is_deleted() -> None:
    """S3 is at a closed port here: the Jobs are deleted first, then emptying `live/`
    fails and the tick returns no patch (the next tick tries again); nothing launched."""
    running = build_live_job(SessionRef("standup", "team", "0b6c-uid"), spec(), "m" * 16, 1,
                             PodSettings())
    running["metadata"]["creationTimestamp"] = "2026-12-02T20:59:00Z"
    service, kube = _service(30)
    chunks = [chunk_obj(0, (ANN, BOB)), chunk_obj(1, (ANN, BOB))]
    assert await service.observe(_session((BOB,), None), chunks, [running]) == {}
    assert kube.calls == [("delete_job", "standup-live-000001")]
    service, kube = _service(30)  # nobody withheld: the same chunks launch a Job
    await service.observe(_session((), None), chunks, [])
    assert kube.calls == [("ensure", "standup-live-000002")]
