// The meeting page: one wavesurfer.js waveform per track drawn from its precomputed peaks
// (audiowaveform JSON, the format Peaks.js reads), each bound to its own <audio> element;
// one play/pause and one position slider drive every track, and a drift check keeps them
// within SYNC_TOLERANCE_S of the first track. Downloads mint a presigned link on click
// (POST with the CSRF token) and open it.
"use strict";
(function () {
  const root = document.getElementById("player");
  if (!root || !window.WaveSurfer) return;
  const SYNC_TOLERANCE_S = 0.08;
  const csrf = root.dataset.csrf;
  const names = JSON.parse(root.dataset.names || "{}");
  const nameOf = (id) => names[id] || id;
  const status = document.getElementById("status");
  const button = document.getElementById("playpause");
  const seek = document.getElementById("seek");
  const clockOut = document.getElementById("clock");
  const tracks = [...root.querySelectorAll(".track")].map((el) => ({
    el, name: el.dataset.track, media: el.querySelector("audio"), ws: null,
  }));
  const master = tracks[0].media;
  let playing = false;

  function clock(s) {
    s = Math.floor(s || 0);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  // audiowaveform data [min0, max0, min1, max1, ...] (8 or 16 bits) → samples in -1..1.
  function peaksOf(doc) {
    const scale = doc.bits === 16 ? 32768 : 128;
    const out = new Float32Array(doc.data.length);
    for (let i = 0; i < doc.data.length; i++) out[i] = doc.data[i] / scale;
    return out;
  }

  async function drawWave(t) {
    const resp = await fetch(t.el.dataset.peaks, { credentials: "same-origin" });
    if (!resp.ok) throw new Error(`peaks of ${t.name}: HTTP ${resp.status}`);
    const doc = await resp.json();
    const duration = (doc.length * doc.samples_per_pixel) / doc.sample_rate;
    t.ws = WaveSurfer.create({
      container: t.el.querySelector(".wave"), media: t.media, peaks: [peaksOf(doc)],
      duration, height: 64, waveColor: "#9aa3e8", progressColor: "#4752c4",
      cursorColor: "#1d1f24", barWidth: 0, normalize: true, interact: true,
    });
    t.ws.on("interaction", (time) => seekAll(time));
    t.el.dataset.drawn = "true";
  }

  function seekAll(time) {
    for (const t of tracks) t.media.currentTime = time;
    seek.value = String(time);
    clockOut.textContent = clock(time);
  }

  async function playAll() {
    const at = master.currentTime;
    for (const t of tracks) t.media.currentTime = at;
    playing = true;
    button.textContent = "Pause all";
    button.setAttribute("aria-pressed", "true");
    try {
      await Promise.all(tracks.map((t) => t.media.play()));
    } catch (err) {
      pauseAll();
      status.textContent = `Playback failed: ${err.message}`;
    }
  }

  function pauseAll() {
    playing = false;
    for (const t of tracks) t.media.pause();
    button.textContent = "Play all";
    button.setAttribute("aria-pressed", "false");
  }

  button.addEventListener("click", () => (playing ? pauseAll() : playAll()));
  seek.addEventListener("input", () => seekAll(Number(seek.value)));
  master.addEventListener("timeupdate", () => {
    if (document.activeElement !== seek) seek.value = String(master.currentTime);
    clockOut.textContent = clock(master.currentTime);
  });
  master.addEventListener("ended", pauseAll);
  // A track's own controls (its waveform, a media key) act on all of them.
  for (const t of tracks) {
    t.media.addEventListener("play", () => { if (!playing) playAll(); });
    t.media.addEventListener("pause", () => { if (playing && !t.media.ended) pauseAll(); });
    t.el.querySelector(".mute").addEventListener("change", (ev) => {
      t.media.muted = ev.target.checked;
    });
  }
  setInterval(() => {
    if (!playing) return;
    for (const t of tracks.slice(1)) {
      if (Math.abs(t.media.currentTime - master.currentTime) > SYNC_TOLERANCE_S) {
        t.media.currentTime = master.currentTime;
      }
    }
  }, 250);

  for (const b of root.querySelectorAll("button.download")) {
    b.addEventListener("click", async () => {
      b.disabled = true;
      status.textContent = "Preparing the link…";
      try {
        const resp = await fetch(b.dataset.link, {
          method: "POST", credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
        });
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        const link = await resp.json();
        const minutes = Math.round(link.expires_in_seconds / 60);
        status.replaceChildren(`Link ready (valid ${minutes} min): `);
        const a = document.createElement("a");
        a.href = link.url;
        a.textContent = `download the ${link.format.toUpperCase()} file`;
        a.rel = "noopener";
        status.append(a);
        b.dataset.url = link.url;
        window.open(link.url, "_blank", "noopener");
      } catch (err) {
        status.textContent = `The link could not be made: ${err.message}`;
      } finally {
        b.disabled = false;
      }
    });
  }

  // The speech timeline, when promotion wrote one: `final/timeline.json`, the contract
  // `voicetrack.manifests.SpeechTimeline` — {version, durationMs, speakers: {userId:
  // [[startMs, endMs], ...]}} in output time (the tracks' own time, pauses cut).
  async function drawTimeline() {
    const resp = await fetch(root.dataset.timeline, { credentials: "same-origin" });
    if (!resp.ok) return;
    const doc = await resp.json();
    const total = Number(doc.durationMs) || Number(root.dataset.durationMs) || 1;
    const lanes = new Map();
    for (const [who, runs] of Object.entries(doc.speakers || {})) {
      const segs = (Array.isArray(runs) ? runs : [])
        .filter((r) => Array.isArray(r) && r.length === 2 && r[1] > r[0]);
      if (segs.length) lanes.set(who, segs);
    }
    if (!lanes.size) return;
    const box = document.querySelector("#timeline .timeline-rows");
    for (const [who, segs] of lanes) {
      const label = document.createElement("div");
      label.textContent = nameOf(who);
      const lane = document.createElement("div");
      lane.className = "lane";
      for (const [a, b] of segs) {
        const seg = document.createElement("button");
        seg.type = "button";
        seg.className = "seg";
        seg.style.left = `${(100 * a) / total}%`;
        seg.style.width = `${Math.max(0.3, (100 * (b - a)) / total)}%`;
        seg.setAttribute("aria-label", `${nameOf(who)} from ${clock(a / 1000)}`);
        seg.dataset.speaker = who;
        seg.addEventListener("click", () => seekAll(a / 1000));
        lane.append(seg);
      }
      box.append(label, lane);
    }
    document.getElementById("timeline").hidden = false;
  }

  Promise.all(tracks.map(drawWave))
    .then(() => { root.dataset.ready = "true"; })
    .catch((err) => { status.textContent = `Waveform: ${err.message}`; });
  drawTimeline().catch(() => {});
})();
