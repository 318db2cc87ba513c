"""A live track's `etag` is an RFC 7232 §2.3 opaque-tag's content (what goes between the
quotes of If-Match), and the ETags our ObjectStore returns are stored that way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from voicetrack.manifests import LiveTrack
from voicetrack.objectstore import ObjectStore

pytestmark = pytest.mark.unit

_TRACK = {"track": "mix", "kind": "mixed", "format": "mp3", "key": "p/1/M/live/mix.mp3",
          "bytes": 9, "durationMs": 1}


@pytest.mark.parametrize("etag", ['"abc"', "a\r\nX-Evil: 1", " ", "ab c", "ab\x7f",
                                  "ab\x00", "é"])
def test_an_etag_outside_rfc7232_etagc_is_refused(etag: str) -> None:
    """Before, any non-empty string validated: a quoted one made If-Match `""abc""`
    (never matching: every fetch a 412), CR/LF made the HTTP client raise ValueError."""
    with pytest.raises(ValidationError, match="etag"):
        LiveTrack.model_validate({**_TRACK, "etag": etag})


@pytest.mark.parametrize("etag", ["0123456789abcdef0123456789abcdef",
                                  "0123456789abcdef0123456789abcdef-3", "!#~x/W"])
def test_s3_etags_pass(etag: str) -> None:
    assert LiveTrack.model_validate({**_TRACK, "etag": etag}).etag == etag


def test_object_store_returns_etags_without_quotes() -> None:
    """SeaweedFS and MinIO answer `"<md5>"`: put_file, stat and
    compose too: what a live Job stores in its manifest validates."""
    store = ObjectStore.__new__(ObjectStore)
    quoted = '"0123456789abcdef0123456789abcdef-2"'
    store.client = SimpleNamespace(  # type: ignore[assignment]
        fput_object=lambda *a, **k: SimpleNamespace(etag=quoted),
        stat_object=lambda *a, **k: SimpleNamespace(etag=quoted, size=5),
        compose_object=lambda *a, **k: SimpleNamespace(etag=quoted))
    store.bucket = "b"
    for etag in (store.put_file("k", "/dev/null", "audio/mpeg"), store.stat("k")[1],
                 store.compose("k", [("src", 0, 5 << 20, None)], "audio/mpeg")):
        assert etag == quoted.strip('"')
        assert LiveTrack.model_validate({**_TRACK, "etag": etag}).etag == etag


def test_an_etag_assigned_after_the_track_was_made_is_checked_when_the_manifest_is() -> None:
    """A live Job makes each track before its object is written and assigns the ETag
    after; the manifest it then builds refuses one outside the pattern, so no manifest
    every reader refuses is written (before, pydantic took the track as it was)."""
    from voicetrack.layout import MeetingLayout
    from voicetrack.manifests import PieceManifest
    from voicetrack_transcoder.liveframes import live_manifest, live_track

    layout = MeetingLayout("p", "123456789012345678", "abcdefABCDEF0123")
    track = live_track("mix", 1, layout.live_key("mix", "mp3"), 10, 1000)
    track.etag = '"0123456789abcdef0123456789abcdef"'
    last = PieceManifest.model_construct(end_frame=100, paused_ms=0)
    with pytest.raises(ValueError, match="etag"):
        live_manifest(layout, last, [track])
    track.etag = "0123456789abcdef0123456789abcdef"
    assert live_manifest(layout, last, [track]).tracks[0].etag == track.etag
