// A live meeting's "audio so far": poll /api/meetings/<id>/live every 3 s (the transcoder's
// live/manifest.json) and, when its version changes, update each track's length ("so far,
// up to m:ss") and its player's source without reloading the page; a player being listened
// to keeps its source until it is paused. Download buttons mint a presigned link on click
// (POST with the CSRF token).
"use strict";
(function () {
  const root = document.getElementById("live");
  if (!root) return;
  const POLL_MS = 3000;
  const list = root.querySelector(".live-tracks");
  const state = root.querySelector(".live-state");
  const csrf = root.dataset.csrf;

  function clock(ms) {
    const s = Math.floor((ms || 0) / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function item(t) {
    const li = document.createElement("li");
    li.className = "live-track";
    li.dataset.track = t.track;
    const h = document.createElement("h3");
    h.id = `live-label-${t.track}`;
    h.textContent = t.kind === "mixed" ? "Everyone (mix)" : (t.name || t.track);
    const so = document.createElement("p");
    so.className = "so-far";
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.setAttribute("aria-labelledby", h.id);
    audio.addEventListener("pause", () => {
      if (li.dataset.pending) { audio.src = li.dataset.pending; delete li.dataset.pending; }
    });
    const b = document.createElement("button");
    b.type = "button";
    b.className = "download";
    b.textContent = "Download so far";
    b.addEventListener("click", () => download(b, li.dataset.link));
    li.append(h, so, audio, b);
    return li;
  }

  async function download(b, url) {
    b.disabled = true;
    try {
      const resp = await fetch(url, { method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const link = await resp.json();
      b.dataset.url = link.url;
      state.textContent = `Link ready (valid ${Math.round(link.expires_in_seconds / 60)} min)`;
      window.open(link.url, "_blank", "noopener");
    } catch (err) {
      state.textContent = `The link could not be made: ${err.message}`;
    } finally {
      b.disabled = false;
    }
  }

  function show(doc) {
    for (const t of doc.tracks) {
      let li = list.querySelector(`li[data-track="${CSS.escape(t.track)}"]`);
      if (!li) { li = item(t); list.append(li); }
      li.dataset.link = t.link_url;
      li.dataset.durationMs = String(t.duration_ms);
      li.querySelector(".so-far").textContent = `so far, up to ${clock(t.duration_ms)}`;
      const audio = li.querySelector("audio");
      if (audio.paused) { audio.src = t.audio_url; delete li.dataset.pending; }
      else li.dataset.pending = t.audio_url;
    }
    state.textContent = `Audio so far: ${clock(doc.duration_ms)} (updates by itself)`;
    root.dataset.version = doc.version;
  }

  async function refresh() {
    try {
      const resp = await fetch(root.dataset.live, { credentials: "same-origin",
                                                    headers: { Accept: "application/json" } });
      if (resp.status === 401) { window.location.assign("/"); return; }
      if (!resp.ok) return;
      const doc = await resp.json();
      if (doc.version !== root.dataset.version) show(doc);
    } catch (err) {
      // offline for a moment: the next tick tries again
    }
  }
  setInterval(refresh, POLL_MS);
  refresh();
})();
