"""The text `voicetrack recordings` prints (the CLI in `voicetrack.recordings.cli`): times
and sizes for people, and a meeting's detail as Rich tables. JSON output does not come
from here (`MeetingDetail.as_dict`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from voicetrack.db.queries import MeetingRecord
from voicetrack.recordings.live import LiveAudio
from voicetrack.recordings.models import MeetingDetail


def hms(ms: int | None) -> str:
    """`h:mm:ss` (or `m:ss` under an hour) of `ms` milliseconds; `-` for None."""
    if ms is None:
        return "-"
    s = ms // 1000
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def size(n: int | None) -> str:
    """A byte count for people (`812.3 KiB`); `-` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def chunks_cell(r: MeetingRecord) -> str:
    """`done/total` of a live meeting's chunks, with the failed ones; `-` without."""
    if r.chunks is None:
        return "-"
    text = f"{r.chunks.done}/{r.chunks.total}"
    return text + (f" ({r.chunks.failed} failed)" if r.chunks.failed else "")


def reason_cell(r: MeetingRecord) -> str:
    """The REASON column of `recordings list`: the failure reason, and `consent degraded
    (<reason>)` when role opt-outs were not enforced as asked; empty when neither."""
    parts = [r.failure_reason] if r.failure_reason else []
    if r.consent_degraded_reason:
        parts.append(f"consent degraded ({r.consent_degraded_reason})")
    return "; ".join(parts)


def show_text(out: Console, d: MeetingDetail) -> None:
    """`voicetrack recordings show` as text on `out`: the meeting, its tracks (size,
    duration, channels, sha256), its gaps, who was recorded and who opted out, and whether
    role opt-outs were not enforced as asked (degraded consent) and why."""
    r = d.record
    lines = [
        f"meeting   {r.meeting_id}  ({r.status})",
        f"session   {r.session or '-'}",
        f"guild     {r.guild_id}  channel {r.channel_id}",
        f"started   {r.started_at.isoformat()}  "
        f"ended {r.ended_at.isoformat() if r.ended_at else '-'}",
        f"speakers  {', '.join(r.speakers) or '-'}",
    ]
    if r.failure_reason:
        lines.append(f"reason    {r.failure_reason}")
    if r.consent_degraded_reason:
        lines.append(f"consent   DEGRADED, role opt-outs not enforced as asked "
                     f"({r.consent_degraded_reason}): {r.consent_degraded_message or '-'}")
    if r.chunks:
        lines.append(f"chunks    {chunks_cell(r)} done")
    if d.manifest:
        m = d.manifest
        lines.append(f"output    {hms(m.duration_ms)} ({m.duration_ms} ms; recorded "
                     f"{m.recorded_ms} ms, paused {m.paused_ms} ms cut)")
    for line in lines:
        out.print(line, markup=False)
    if d.tracks:
        table = Table("TRACK", "FORMAT", "SIZE", "DURATION", "CH", "SHA256")
        for t in d.tracks:
            table.add_row(t.track, t.format, size(t.bytes),
                          f"{t.duration_ms} ms" if t.duration_ms is not None else "-",
                          str(t.channels or "-"), t.sha256 or "-")
        out.print(table)
    if d.manifest and d.manifest.gaps:
        gaps = Table("GAP START", "END", "LENGTH", "CAUSE")
        for g in d.manifest.gaps:
            gaps.add_row(f"{g.start_ms} ms", f"{g.end_ms} ms", hms(g.end_ms - g.start_ms),
                         g.cause)
        out.print(gaps)
    if d.timeline_key:
        out.print(f"timeline  {d.timeline_key}", markup=False)
    if d.consent:
        c = d.consent
        out.print(f"consent   {d.consent_key}: {len(c.recorded)} recorded, "
                  f"{len(c.opted_out)} opted out", markup=False)
        if c.consent_degraded:
            degraded = c.consent_degraded
            out.print(f"          degraded from {hms(degraded.since_ms)} to "
                      f"{hms(degraded.until_ms)} ({degraded.reason})", markup=False)
        if c.opted_out:
            table = Table("OPTED OUT", "SINCE", "VIA", "AUDIO")
            for o in c.opted_out:
                table.add_row(o.user_id, hms(o.since_ms), o.via,
                              "none kept (out at stop)" if o.excluded
                              else "kept outside the opted-out time")
            out.print(table)


def show_live(out: Console, live: LiveAudio | str) -> None:
    """The audio so far of a live meeting on `out`, or why there is none yet."""
    if isinstance(live, str):
        out.print(f"so far    {live}", markup=False)
        return
    out.print(f"so far    {hms(live.manifest.duration_ms)} ({live.manifest.duration_ms} ms; "
              "`voicetrack recordings url MEETING --live`)", markup=False)
    # a live track has the ETag of its object, no sha256 (older manifests: the reverse)
    table = Table("LIVE TRACK", "FORMAT", "SIZE", "SO FAR", "CH", "ETAG")
    for t in live.manifest.tracks:
        table.add_row(t.track, t.format, size(t.bytes), f"{t.duration_ms} ms",
                      str(t.channels), t.etag or (f"sha256 {t.sha256}" if t.sha256 else "-"))
    out.print(table)
