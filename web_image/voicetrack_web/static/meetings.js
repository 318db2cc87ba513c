// The meetings list: while any meeting records, poll its JSON every 3 s and redraw the rows
// (chunk progress from temp_recordings, state, duration) without reloading the page.
"use strict";
(function () {
  const table = document.getElementById("meetings");
  if (!table) return;
  const body = table.querySelector("tbody");
  const me = table.dataset.me;
  const POLL_MS = 3000;

  function clock(ms) {
    const s = Math.floor((ms || 0) / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }
  function cell(label, content) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (content instanceof Node) td.append(content); else td.textContent = content;
    return td;
  }
  function row(m) {
    const tr = document.createElement("tr");
    tr.dataset.id = m.id;
    tr.dataset.status = m.status;
    const a = document.createElement("a");
    a.href = `/meetings/${encodeURIComponent(m.id)}`;
    a.textContent = m.started_at.slice(0, 19).replace("T", " ");
    const state = document.createElement("span");
    state.className = `state state-${m.status}`;
    state.textContent = m.status;
    const total = Object.values(m.chunks).reduce((x, y) => x + y, 0);
    const progress = total ? `${m.chunks.done || 0} / ${total} chunk tracks transcoded`
      : m.tracks.length ? `${m.tracks.length} final tracks` : "—";
    const spoke = m.speakers.includes(me) ? " (you spoke)" : "";
    const names = (m.speaker_names || m.speakers).join(", ") || "—";
    tr.append(cell("Started", a), cell("Duration", clock(m.duration_ms)),
              cell("Speakers", `${names}${spoke}`), cell("State", state),
              cell("Progress", progress));
    return tr;
  }
  async function refresh() {
    try {
      const resp = await fetch(table.dataset.json, { headers: { Accept: "application/json" },
                                                      credentials: "same-origin" });
      if (resp.status === 401) { window.location.assign("/"); return; }
      if (!resp.ok) return;
      const { meetings } = await resp.json();
      const focused = document.activeElement && document.activeElement.closest("tr");
      const focusId = focused ? focused.dataset.id : null;
      body.replaceChildren(...meetings.map(row));
      if (focusId) {
        const again = body.querySelector(`tr[data-id="${CSS.escape(focusId)}"] a`);
        if (again) again.focus();
      }
      table.dataset.updated = String(Date.now());
    } catch (err) {
      // offline for a moment: the next tick tries again
    }
  }
  setInterval(refresh, POLL_MS);
  refresh();
})();
