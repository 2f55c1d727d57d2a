// The live page: a namespace's TaskRuns from the gateway's namespace stream, and one
// run's detail from its own stream. Everything shown is text (textContent), never HTML:
// results, messages and tracebacks come from tasks, which may hold anything.
"use strict";

const API = "/api/v1/namespaces";
const SUBPROTOCOL = "taskrun.v1";
const TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io.";
const TERMINAL = new Set(["Succeeded", "Failed", "TimedOut", "Revoked"]);
const RECONNECT_MS = 2000;
const SCHEDULES_MS = 10000; // the schedules list is read again this often

const state = {
  namespace: "",
  token: "",
  runs: new Map(), // name -> summary
  listSocket: null,
  detailSocket: null,
  detailName: null,
  seen: [], // the selected run's phases as this page saw them: [time, phase, reason]
  generation: 0, // bumps on each (re)connect, so stale sockets stay quiet
};

const $ = (id) => document.getElementById(id);

function setText(el, text) {
  el.textContent = text == null ? "" : String(text);
}

function problem(text) {
  const el = $("problem");
  setText(el, text);
  el.hidden = !text;
}

function connection(stateName, text) {
  const el = $("connection");
  el.dataset.state = stateName;
  setText(el, text);
}

function tokenProtocol(token) {
  const bytes = new TextEncoder().encode(token);
  let binary = "";
  bytes.forEach((b) => { binary += String.fromCharCode(b); });
  return TOKEN_PROTOCOL + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function openSocket(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new WebSocket(`${scheme}//${location.host}${path}`,
    [SUBPROTOCOL, tokenProtocol(state.token)]);
}

async function fetchJson(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return body;
}

// -- durations ------------------------------------------------------------------

function seconds(ms) {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${Math.floor(s % 60)}s` : `${Math.floor(m / 60)}h${m % 60}m`;
}

function duration(run) {
  if (run.duration) return run.duration;
  const start = Date.parse(run.startedAt || run.submittedAt || "");
  if (Number.isNaN(start)) return "";
  return seconds(Math.max(0, Date.now() - start));
}

function percent(progress) {
  if (!progress) return null;
  if (typeof progress.percent === "number") return progress.percent;
  if (typeof progress.current === "number" && typeof progress.total === "number"
      && progress.total > 0) {
    return (100 * progress.current) / progress.total;
  }
  return null;
}

// -- the list ---------------------------------------------------------------------

function phaseCell(td, run) {
  const phase = run.phase || "Pending";
  td.className = "phase";
  td.dataset.phase = phase;
  setText(td, run.reason && run.reason !== phase ? `${phase} (${run.reason})` : phase);
}

function progressCell(td, run) {
  const value = percent(run.progress);
  td.replaceChildren();
  if (value == null && !TERMINAL.has(run.phase)) return;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = value == null ? (run.phase === "Succeeded" ? 100 : 0) : value;
  const label = document.createElement("span");
  setText(label, value == null ? "" : ` ${Math.round(value)}%`);
  td.append(bar, label);
}

function renderRow(run) {
  const body = $("runs").tBodies[0];
  let row = body.querySelector(`tr[data-run="${CSS.escape(run.name)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.run = run.name;
    for (const cls of ["name", "task", "phase", "progress", "duration", "error"]) {
      const td = document.createElement("td");
      td.className = cls;
      row.append(td);
    }
    row.addEventListener("click", () => openDetail(run.name));
    body.prepend(row);
  }
  row.classList.toggle("selected", run.name === state.detailName);
  setText(row.querySelector(".name"), run.name);
  setText(row.querySelector(".task"), run.task);
  phaseCell(row.children[2], run);
  progressCell(row.querySelector(".progress"), run);
  setText(row.querySelector(".duration"), duration(run));
  const error = run.error ? `${run.error.type || ""}: ${run.error.message || ""}` : "";
  setText(row.querySelector(".error"), error);
  $("empty").hidden = state.runs.size > 0;
}

function removeRow(name) {
  const row = $("runs").tBodies[0].querySelector(`tr[data-run="${CSS.escape(name)}"]`);
  if (row) row.remove();
  $("empty").hidden = state.runs.size > 0;
}

function onListMessage(message) {
  if (message.type === "ERROR") {
    problem(`${message.status}: ${message.detail}`);
    return;
  }
  if (message.type === "SNAPSHOT") {
    state.runs.clear();
    $("runs").tBodies[0].replaceChildren();
    const items = [...message.items].sort((a, b) =>
      String(a.createdAt).localeCompare(String(b.createdAt)));
    for (const run of items) {
      state.runs.set(run.name, run);
      renderRow(run);
    }
    $("empty").hidden = state.runs.size > 0;
  } else if (message.type === "DELETED") {
    state.runs.delete(message.run.name);
    removeRow(message.run.name);
  } else if (message.run) {
    state.runs.set(message.run.name, message.run);
    renderRow(message.run);
  }
}

function follow(path, onMessage, generation, label) {
  const socket = openSocket(path);
  let opened = false;
  socket.onopen = () => {
    opened = true;
    if (generation === state.generation) connection("live", label);
  };
  socket.onmessage = (event) => {
    if (generation === state.generation) onMessage(JSON.parse(event.data));
  };
  socket.onclose = (event) => {
    if (generation !== state.generation) return;
    if (event.code >= 4000) {
      connection("error", `refused (${event.code - 4000})`);
    } else if (socket === state.listSocket) {
      // Refused at the handshake (an expired token?) or dropped: start over, which
      // asks with a plain request first and shows why if the gateway says no.
      connection("error", "reconnecting…");
      setTimeout(() => {
        if (generation === state.generation) start(state.namespace, state.token, state.detailName);
      }, RECONNECT_MS);
    } else if (socket === state.detailSocket && !opened) {
      problem(`cannot follow ${state.detailName}: refused or gone`);
    }
  };
  return socket;
}

function startList() {
  const generation = state.generation;
  state.listSocket = follow(`${API}/${encodeURIComponent(state.namespace)}/taskruns/stream`,
    onListMessage, generation, `live: ${state.namespace}`);
}

// -- one run ------------------------------------------------------------------------

function timelineItem(time, text) {
  const li = document.createElement("li");
  const stamp = document.createElement("time");
  setText(stamp, time || "");
  const what = document.createElement("span");
  setText(what, text);
  li.append(stamp, what);
  return li;
}

function renderTimeline(run) {
  const status = run.status || {};
  const items = [];
  if (run.createdAt) items.push([run.createdAt, "created"]);
  if (status.submittedAt) items.push([status.submittedAt, `submitted (task ${status.taskId || ""})`]);
  for (const attempt of status.attempts || []) {
    items.push([attempt.completedAt || attempt.submittedAt,
      `attempt ${attempt.attempt}: ${attempt.phase} (${attempt.reason || ""})`]);
  }
  if (status.startedAt) items.push([status.startedAt, `started on ${status.worker || "a worker"}`]);
  if (status.completedAt) items.push([status.completedAt, `${status.phase} (${status.reason || ""})`]);
  items.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  const list = $("detail-timeline");
  list.replaceChildren(...items.map(([time, text]) => timelineItem(time, text)));
  for (const [time, phase, reason] of state.seen) {
    list.append(timelineItem(time, `seen here: ${phase}${reason ? ` (${reason})` : ""}`));
  }
}

function renderDetail(run) {
  if (run.name !== state.detailName) return;
  const status = run.status || {};
  const last = state.seen[state.seen.length - 1];
  const phase = run.phase || "Pending";
  if (!last || last[1] !== phase || last[2] !== (run.reason || "")) {
    state.seen.push([new Date().toISOString(), phase, run.reason || ""]);
  }
  $("detail").hidden = false;
  setText($("detail-name"), run.name);
  phaseCell($("detail-phase"), run);
  setText($("detail-task"), run.task);
  setText($("detail-reason"), run.reason);
  setText($("detail-message"), run.message);
  const value = percent(run.progress);
  $("detail-progress").value = value == null ? (phase === "Succeeded" ? 100 : 0) : value;
  setText($("detail-percent"), value == null ? "" : `${Math.round(value)}%`);
  setText($("detail-duration"), duration({ ...status, duration: status.duration }));
  const spec = run.spec || {};
  setText($("detail-args"), JSON.stringify({ args: spec.args || [], kwargs: spec.kwargs || {} }));
  const hasResult = phase === "Succeeded";
  setText($("detail-result"), hasResult ? JSON.stringify(status.result, null, 2) : "");
  if (status.resultTruncated) {
    $("detail-result").append(`\n(a preview: the result was ${status.resultBytes} bytes)`);
  }
  const error = status.error || null;
  setText($("detail-error"), error ? `${error.type || ""}: ${error.message || ""}` : "");
  setText($("detail-traceback"), error && error.traceback ? error.traceback : "");
  renderTimeline(run);
}

function openDetail(name) {
  if (state.detailSocket) state.detailSocket.close();
  state.detailName = name;
  state.seen = [];
  for (const row of $("runs").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.run === name);
  }
  writeFragment();
  const path = `${API}/${encodeURIComponent(state.namespace)}/taskruns/${encodeURIComponent(name)}`;
  const generation = state.generation;
  // The stream's first message is the run as it is now; then each change, until the end.
  state.detailSocket = follow(`${path}/stream`, (message) => {
    if (message.type === "ERROR") problem(`${message.status}: ${message.detail}`);
    else renderDetail(message);
  }, generation, `live: ${state.namespace}`);
}

function closeDetail() {
  if (state.detailSocket) state.detailSocket.close();
  state.detailSocket = null;
  state.detailName = null;
  $("detail").hidden = true;
  writeFragment();
}

// -- wiring ----------------------------------------------------------------------------

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { namespace: params.get("namespace"), token: params.get("token"), run: params.get("run") };
}

function writeFragment() {
  // The token never stays in the address bar (nor in history): it lives in this tab only.
  const params = new URLSearchParams();
  if (state.namespace) params.set("namespace", state.namespace);
  if (state.detailName) params.set("run", state.detailName);
  history.replaceState(null, "", `#${params}`);
}

// -- schedules ------------------------------------------------------------------

function scheduleRow(schedule) {
  const tr = document.createElement("tr");
  tr.dataset.name = schedule.name;
  const state = schedule.suspend ? "Suspended"
    : schedule.ready === "False" ? `${schedule.reason}: ${schedule.message}` : "Scheduled";
  const zone = schedule.timeZone && schedule.timeZone !== "UTC" ? ` (${schedule.timeZone})` : "";
  for (const text of [schedule.name, `${schedule.schedule}${zone}`, schedule.task,
    schedule.nextScheduleTime || "-", schedule.lastScheduleTime || "-", schedule.active, state]) {
    const td = document.createElement("td");
    setText(td, text);
    tr.appendChild(td);
  }
  return tr;
}

async function loadSchedules(generation) {
  let body;
  try {
    body = await fetchJson(`${API}/${encodeURIComponent(state.namespace)}/crontaskruns?limit=500`);
  } catch (error) {
    body = { items: [] }; // no right to list them, or none: the section stays hidden
  }
  if (generation !== state.generation) return;
  const rows = body.items.map(scheduleRow);
  $("schedules").tBodies[0].replaceChildren(...rows);
  $("schedules-section").hidden = rows.length === 0;
  setTimeout(() => { if (generation === state.generation) loadSchedules(generation); },
    SCHEDULES_MS);
}

async function start(namespace, token, run) {
  state.generation += 1;
  for (const socket of [state.listSocket, state.detailSocket]) if (socket) socket.close();
  state.namespace = namespace;
  state.token = token;
  sessionStorage.setItem("taskrun.namespace", namespace);
  sessionStorage.setItem("taskrun.token", token);
  $("namespace").value = namespace;
  $("token").value = token;
  problem("");
  connection("idle", "connecting…");
  try {
    // One plain request first: a refusal (401, 403) reads better here than a closed socket.
    await fetchJson(`${API}/${encodeURIComponent(namespace)}/taskruns?limit=1`);
  } catch (error) {
    connection("error", "refused");
    problem(error.message);
    return;
  }
  startList();
  loadSchedules(state.generation);
  if (run) openDetail(run);
  else closeDetail();
}

function init() {
  const fragment = readFragment();
  const namespace = fragment.namespace || sessionStorage.getItem("taskrun.namespace") || "";
  const token = fragment.token || sessionStorage.getItem("taskrun.token") || "";
  $("connect").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("namespace").value.trim(), $("token").value.trim(), null);
  });
  $("detail-close").addEventListener("click", closeDetail);
  setInterval(() => {
    for (const run of state.runs.values()) {
      if (!TERMINAL.has(run.phase)) renderRow(run);
    }
  }, 1000);
  if (namespace && token) start(namespace, token, fragment.run);
  else writeFragment();
}

init();
