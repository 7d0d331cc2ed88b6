// The qmail dispatcher console: plain DOM over /api/v1 (no framework, no build step).
// Every value from the spool is untrusted: it only ever goes into textContent.
"use strict";

const STATES = ["ready", "scheduled", "active", "deferred", "hold", "failed", "corrupt"];
const $ = (sel) => document.querySelector(sel);
let current = null; // the id shown in the detail panel

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function rfc3339(secs) {
  return new Date(secs * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function relative(secs) {
  const d = Math.round(Date.now() / 1000 - secs);
  const a = Math.abs(d);
  let s;
  if (a < 10) return "just now";
  else if (a < 120) s = `${a} s`;
  else if (a < 7200) s = `${Math.floor(a / 60)} min`;
  else if (a < 172800) s = `${Math.floor(a / 3600)} h`;
  else s = `${Math.floor(a / 86400)} d`;
  return d >= 0 ? `${s} ago` : `in ${s}`;
}

function human(secs) {
  return secs == null ? "" : `${rfc3339(secs)} (${relative(secs)})`;
}

function flash(msg, isError) {
  const f = $("#flash");
  f.textContent = msg;
  f.className = isError ? "error" : "";
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const msg = (body && (body.error || body.outcome)) || `${r.status} ${r.statusText}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function drawChart(history, now) {
  const svg = $("#chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const start = Math.floor(now / 60) * 60 - 59 * 60;
  const byMinute = new Map(history.map((m) => [m.minute, m]));
  let max = 1;
  for (const m of history) max = Math.max(max, m.delivered + m.deferred + m.failed);
  const w = 600 / 60;
  for (let i = 0; i < 60; i++) {
    const m = byMinute.get(start + i * 60);
    if (!m) continue;
    let y = 120;
    for (const k of ["delivered", "deferred", "failed"]) {
      const h = (m[k] / max) * 110;
      if (h <= 0) continue;
      y -= h;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", String(i * w + 1));
      r.setAttribute("y", String(y));
      r.setAttribute("width", String(w - 2));
      r.setAttribute("height", String(h));
      r.setAttribute("class", k);
      const t = document.createElementNS(ns, "title");
      t.textContent = `${rfc3339(m.minute)}: ${m[k]} ${k}`;
      r.append(t);
      svg.append(r);
    }
  }
}

async function refreshStatus() {
  const s = await api("/api/v1/status");
  const totals = Object.fromEntries(STATES.map((k) => [k, 0]));
  // a directory dispatcher serves spools; a `run --queue` one a PostgreSQL queue
  for (const sp of [...(s.spools || []), ...(s.queues || [])]) {
    for (const k of STATES) totals[k] += (sp.states[k] || {}).count || 0;
  }
  const box = $("#counts");
  box.replaceChildren(...STATES.map((k) =>
    el("button", { class: "count", "data-state": k, type: "button", onclick: () => showState(k) },
      el("b", {}, totals[k]), el("small", {}, k))));
  drawChart(s.history || [], s.now);
  $("#updated").textContent = `updated ${rfc3339(s.now)}`;
  document.body.dataset.actions = s.actions ? "on" : "off";
}

function showState(dirName) {
  const map = { ready: "queued", hold: "held", corrupt: "failed" };
  $("#state-filter").value = map[dirName] || dirName;
  refreshList();
}

function row(m) {
  const link = el("a", { class: "msg-link", href: `#${m.id}`, onclick: (e) => { e.preventDefault(); openMessage(m.id); } }, m.id);
  const reply = m.reasons && m.reasons.length ? m.reasons.join("; ") : (m.last_reply || "");
  return el("tr", { "data-id": m.id, "data-state": m.state },
    el("td", {}, link),
    el("td", { class: "state" }, m.state),
    el("td", { title: m.created ? rfc3339(m.created) : "" }, m.created ? relative(m.created) : "?"),
    el("td", {}, (m.recipients || []).join(", ")),
    el("td", {}, m.attempts),
    el("td", { class: "reply" }, reply));
}

async function refreshList(extra) {
  const st = $("#state-filter").value;
  const q = new URLSearchParams(extra || {});
  if (st) q.set("state", st);
  const r = await api(`/api/v1/messages?${q}`);
  const tb = $("#messages tbody");
  tb.replaceChildren(...r.messages.map(row));
  if (!r.messages.length) tb.append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "no message")));
}

function field(dl, name, value) {
  if (value == null || value === "" || (Array.isArray(value) && !value.length)) return;
  dl.append(el("dt", {}, name), el("dd", {}, Array.isArray(value) ? value.join(", ") : value));
}

async function openMessage(id) {
  const r = await api(`/api/v1/messages/${encodeURIComponent(id)}`);
  current = id;
  const m = r.message || {};
  const s = r.status || {};
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  // a queue's tombstone of a deletion: the row says so (a spool's deleted file is just gone)
  const state = r.queue && s.dir === "deleted" ? "deleted" : (s.state || m.state || "unknown");
  $("#detail-state").textContent = state;
  $("#detail").dataset.state = state;
  const dl = $("#detail-fields");
  dl.replaceChildren();
  if (r.queue) {
    field(dl, "queue", r.queue);
    field(dl, "row state", s.dir || m.state);
  } else {
    field(dl, "directory", s.dir || m.state);
  }
  field(dl, "from", m.mail_from != null ? `<${m.mail_from}>` : null);
  field(dl, "to", (m.rcpt_to || []).map((x) => `<${x}>`));
  field(dl, "Message-ID", m.message_id);
  field(dl, "submitted", m.created != null ? human(m.created) : null);
  field(dl, "size", m.size != null ? `${m.size} bytes` : null);
  field(dl, "priority", m.priority);
  field(dl, "attempts", s.attempts);
  field(dl, "next attempt", s.next_attempt != null ? human(s.next_attempt) : null);
  field(dl, "last reply", s.last_reply);
  field(dl, state === "failed" ? "failed" : "reason", s.reasons);
  field(dl, "delivered", s.delivered_at != null ? human(s.delivered_at) : null);
  field(dl, "claimed by", s.owner);
  field(dl, "error", m.error);
  const tl = $("#timeline");
  tl.replaceChildren();
  if (m.created != null) tl.append(el("li", {}, `${human(m.created)} submitted`));
  const hist = (m.dispatch && m.dispatch.history) || [];
  for (const a of hist) {
    const li = el("li", { "data-attempt": a.number },
      `${human(Math.floor(a.at_ms / 1000))} attempt ${a.number} via ${a.relay} (${a.duration_ms} ms)`);
    const ul = el("ul", {});
    for (const x of a.results) {
      const code = x.reply.code != null ? `${x.reply.code} ` : "";
      ul.append(el("li", { class: "rcpt" }, `<${x.rcpt}> ${x.status}: ${code}${x.reply.text}`));
    }
    li.append(ul);
    tl.append(li);
  }
  for (const a of r.log || []) {
    tl.append(el("li", {}, `${human(Math.floor(a.ts_ms / 1000))} attempt ${a.attempt} via ${a.relay}: ${a.code ?? ""} ${a.reply}`));
  }
  const can = {
    retry: state === "deferred",
    hold: ["queued", "scheduled", "deferred"].includes(state),
    release: state === "held",
    requeue: state === "failed" && s.dir === "failed",
    delete: ["queued", "scheduled", "deferred", "held", "failed"].includes(state),
  };
  for (const b of document.querySelectorAll(".actions button")) b.disabled = !can[b.dataset.action];
}

async function act(action) {
  if (!current) return;
  const token = $("#token").value || sessionStorage.getItem("qmail-token") || "";
  if (token) sessionStorage.setItem("qmail-token", token);
  if (action === "delete" && !window.confirm(`Delete ${current}? This cannot be undone.`)) return;
  const id = current;
  const path = action === "delete"
    ? `/api/v1/messages/${encodeURIComponent(id)}`
    : `/api/v1/messages/${encodeURIComponent(id)}/${action}`;
  try {
    await api(path, { method: action === "delete" ? "DELETE" : "POST", headers: { Authorization: `Bearer ${token}` } });
    flash(`${id}: ${action} done`);
  } catch (e) {
    flash(`${id}: ${action} refused: ${e.message}`, true);
  }
  await refreshStatus();
  await refreshList();
  if (action === "delete") { $("#detail").hidden = true; current = null; }
  else await openMessage(id).catch(() => {});
}

async function search(ev) {
  ev.preventDefault();
  const rcpt = $("#q-rcpt").value.trim();
  const mid = $("#q-mid").value.trim();
  const found = $("#found");
  found.replaceChildren();
  if (rcpt) {
    $("#state-filter").value = "";
    await refreshList({ rcpt });
  }
  if (rcpt || mid) {
    const q = new URLSearchParams();
    if (rcpt) q.set("rcpt", rcpt);
    if (mid) q.set("message_id", mid);
    try {
      const r = await api(`/api/v1/find?${q}`);
      const ul = el("ul", {});
      for (const a of r.attempts) {
        const link = el("a", { class: "msg-link", onclick: () => openMessage(a.id) }, a.id);
        ul.append(el("li", { "data-id": a.id }, link,
          ` ${human(Math.floor(a.ts_ms / 1000))} attempt ${a.attempt} via ${a.relay}: ${a.code ?? ""} ${a.reply}`));
      }
      found.append(el("p", { class: "muted" }, `${r.attempts.length} attempt(s) in the delivery log`), ul);
    } catch (e) {
      found.append(el("p", { class: "muted" }, `delivery log: ${e.message}`));
    }
  }
}

function start() {
  const t = sessionStorage.getItem("qmail-token");
  if (t) $("#token").value = t;
  $("#state-filter").addEventListener("change", () => refreshList());
  $("#search").addEventListener("submit", search);
  $("#q-clear").addEventListener("click", () => { $("#q-rcpt").value = ""; $("#q-mid").value = ""; $("#found").replaceChildren(); refreshList(); });
  for (const b of document.querySelectorAll(".actions button")) b.addEventListener("click", () => act(b.dataset.action));
  const tick = () => Promise.all([refreshStatus(), refreshList()]).catch((e) => flash(e.message, true));
  tick().then(() => {
    document.body.dataset.ready = "1";
    if (location.hash.length > 1) openMessage(location.hash.slice(1)).catch((e) => flash(e.message, true));
  });
  setInterval(() => refreshStatus().catch(() => {}), 5000);
}

document.addEventListener("DOMContentLoaded", start);
