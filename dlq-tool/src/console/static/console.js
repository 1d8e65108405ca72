// The Courier console's only script (served from the binary; no build step). It never turns
// data into markup: the fleet fragment is HTML the server rendered (and escaped), and the job's
// numbers are set as text.
"use strict";

function refreshFleet(el) {
  const every = Number(el.dataset.refreshMs) || 5000;
  setInterval(async () => {
    try {
      const r = await fetch("/fleet", { credentials: "same-origin" });
      if (r.ok) el.innerHTML = await r.text();
    } catch (_) { /* the next tick tries again */ }
  }, every);
}

function followJob(el) {
  const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = String(v); };
  const tick = async () => {
    let s;
    try {
      const r = await fetch(el.dataset.status, { credentials: "same-origin" });
      if (!r.ok) return setTimeout(tick, 1000);
      s = await r.json();
    } catch (_) { return setTimeout(tick, 1000); }
    set("job-pass", s.passes); set("job-done", s.done); set("job-total", s.total); set("job-state", s.state);
    const bar = document.getElementById("job-bar");
    if (bar) { bar.max = Math.max(1, s.total); bar.value = s.done; }
    if (s.state === "running") return setTimeout(tick, 500);
    set("job-outcome", `${s.outcome} — moved ${s.moved}, left ${s.left}, failed ${s.failed}`);
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.getElementById("fleet");
  if (fleet) refreshFleet(fleet);
  const job = document.getElementById("job");
  if (job) followJob(job);
});
