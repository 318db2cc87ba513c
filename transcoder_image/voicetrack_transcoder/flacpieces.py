"""Incremental promotion of FLAC final tracks: each chunk's FLAC piece, made by its Job
beside the MP3 one (`pieces.build_piece`), for every session that asks for FLAC, with MP3
or alone (a FLAC-only session's MP3 pieces serve its waveforms, timeline and audio so far,
never a final MP3); the final FLAC tracks are joined from them at assembly
(`flacassembly.py`).

FLAC frames are independent (`flacframes.py`), and FLAC is lossless: a piece is the unit's
PCM (the piece's render, the same samples the MP3 piece encodes) as FLAC frames
(ffmpeg's encoder, 48 kHz, the track's channels, 16 bits) renumbered at once to their
place in the final track, so no encoder state crosses a unit boundary and the final track
decodes to exactly the PCM the renders gave. A final FLAC track is `fLaC`, one STREAMINFO
(exact total samples, true min/max block sizes, frame sizes 0 = unknown and MD5 all zero =
not computed, RFC 9639 §8.2) and every unit's frames in order. Units without a piece (a
failed chunk's window, a chunk nobody spoke in, the time after the last piece) are
rendered at assembly as the MP3 path renders them and encoded the same way; where their
audio is digital silence, and for a speaker absent from a piece, the frames are
CONSTANT subframes of 0 (`flacframes.silent_frames`).

Not exact in one case: a render decodes Opus from the start of the chunk before the unit
with a fresh decoder; when a speaker talks across that start, the decoder state at the
unit differs slightly from that of the full promotion's one decoder for the whole
session, as it does for the MP3 pieces. The difference is small but need not die out:
up to 50 LSB (-56 dBFS) in tests/integration/test_transcoder_flac_pieces.py, and on a
steady voiced tone 4-6 LSB on most samples still 20 s after the restart (a review's
measurement; with noise it converged within 1 s). So an assembled FLAC of Opus raw
chunks is lossless against its pieces' renders, not bit-identical to what a full
promotion (the fallback) decodes. PCM raw chunks, and Opus whose warm-up starts in
silence, are sample-exact. The STREAMINFO's MD5 is left unset (zero): libFLAC's
`flac -t` passes, `flac -t -w` refuses an unset MD5; the full promotion writes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FlacPiece
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack_transcoder.ffmpeg import BITEXACT, CONTENT_TYPES, encode_args, pcm_input, run
from voicetrack_transcoder.flacframes import renumber, silent_frames, strip_head

READABLE_SAMPLES = 1 << 31
"""Samples per channel (12.4 h at 48 kHz) from which an assembled FLAC track is not made:
ffmpeg 5.1 (what the transcoder and the zip bundle decode with) stops decoding a
variable-blocksize stream at sample 2^31 + 1024 without an error, though RFC 9639 codes
sample numbers up to 2^36 (tests/integration/test_transcoder_flac_pieces.py shows it);
its fixed-blocksize streams, what the full promotion writes, are read to the end. Such
a meeting is promoted in full."""


@dataclass
class FlacRun:
    """FLAC frames numbered at their place in the final track and their block sizes."""

    data: bytes
    blocks: list[int]

    @property
    def samples(self) -> int:
        return sum(self.blocks)

    def described(self, key: str) -> FlacPiece:
        """The piece manifest of these frames stored at `key`."""
        inner = self.blocks[:-1]
        return FlacPiece(key=key, samples=self.samples, frames=len(self.blocks),
                         bytes=len(self.data), sha256=sha256_hex(self.data),
                         min_block=min(inner, default=0), max_block=max(inner, default=0),
                         last_block=self.blocks[-1] if self.blocks else 0)


def encode_runs(pcm: dict[str, np.ndarray], first_sample: int, workdir: Path) -> dict[str, FlacRun]:
    """Each track's samples (int16, shape (n, channels)) as FLAC frames from sample
    `first_sample` of the final track: one ffmpeg run for the tracks with sound, CONSTANT
    frames for the all-zero ones. Raises TemporaryFailure for ffmpeg failures, ValueError
    when ffmpeg's output is not frames of the samples given (`flacframes.frames_of`)."""
    out: dict[str, FlacRun] = {}
    loud = {k: v for k, v in pcm.items() if np.any(v)}
    for k, v in pcm.items():
        if k not in loud:
            out[k] = FlacRun(*silent_frames(v.shape[0], v.shape[1], first_sample))
    args: list[str] = []
    files = []
    for i, (k, v) in enumerate(loud.items()):
        src, dst = workdir / f"flac-in-{i}.pcm", workdir / f"flac-out-{i}.flac"
        src.write_bytes(np.ascontiguousarray(v, dtype="<i2").tobytes())
        args += [*pcm_input(v.shape[1]), "-i", str(src)]
        files.append((k, src, dst))
    for i, (_, _, dst) in enumerate(files):
        args += ["-map", f"{i}:a:0", *encode_args("flac", 128), *BITEXACT, str(dst)]
    if files:
        run(args, "flac pieces")
    for k, src, dst in files:
        frames, blocks = renumber(strip_head(dst.read_bytes()), first_sample)
        if sum(blocks) != pcm[k].shape[0]:
            raise ValueError(f"FLAC of {k}: {sum(blocks)} samples in the frames found, "
                             f"{pcm[k].shape[0]} encoded")
        out[k] = FlacRun(frames, blocks)
        src.unlink()
        dst.unlink()
    return out


def store_pieces(store: ObjectStore, layout: MeetingLayout, index: int,
                 runs: dict[str, FlacRun]) -> dict[str, FlacPiece]:
    """Upload chunk `index`'s FLAC piece of each track; their manifests by track."""
    pieces = {}
    for track, flac in runs.items():
        key = layout.piece_key(index, track, "flac")
        store.put_bytes(key, flac.data, CONTENT_TYPES["flac"])
        pieces[track] = flac.described(key)
    return pieces
