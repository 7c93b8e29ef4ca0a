// The runrelay dashboard: plain browser JavaScript, no build step.
//
// Following a run: the browser's EventSource resumes by itself (it sends
// Last-Event-ID). When it gives up (readyState CLOSED after an error: a 502, a 204,
// a proxy that went away) the page opens a new one at ?after=<last id seen>.
// The followed run, its last event id and its text *per event id* live in
// localStorage, so a reload resumes where the page was and a repeated event can
// never add its text twice.
"use strict";

const KEY_TOKEN = "runrelay.token";
const KEY_FOLLOW = "runrelay.follow";
const TERMINAL_TYPES = new Set(["run.completed", "run.failed", "run.cancelled"]);
const TERMINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);
// EventSource has no wildcard listener: these are the types the page shows.
const EVENT_TYPES = [
  "run.queued", "run.started", "run.retrying", "run.completed", "run.failed", "run.cancelled",
  "output.message.delta", "output.message.completed",
  "tool.started", "tool.progress", "tool.completed",
  "operation.accepted", "operation.completed", "stream.gap",
];
const MAX_LOG = 200;
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- API ---------------------------------------------------------------------------

function token() {
  return localStorage.getItem(KEY_TOKEN) || "";
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    // A retried click must never start a second run.
    headers["Idempotency-Key"] = `dash-${crypto.randomUUID ? crypto.randomUUID() : Math.random()}`;
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${message}`);
  }
  return data;
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

// --- the followed run --------------------------------------------------------------

// {runId, lastId, deltas: {id: text}, status, done, progress, log: [line]}
let follow = null;
let source = null;
let recreateTimer = null;
let failures = 0;

function loadFollow() {
  try {
    const saved = JSON.parse(localStorage.getItem(KEY_FOLLOW) || "null");
    if (saved && typeof saved.runId === "string" && Number.isInteger(saved.lastId)) {
      saved.deltas = saved.deltas || {};
      saved.log = saved.log || [];
      return saved;
    }
  } catch (_) {
    // A corrupt entry: start afresh.
  }
  return null;
}

function saveFollow() {
  localStorage.setItem(KEY_FOLLOW, JSON.stringify(follow));
}

function followRun(runId) {
  closeSource();
  follow = { runId, lastId: 0, deltas: {}, status: "", done: false, progress: null, log: [] };
  saveFollow();
  failures = 0;
  renderFollow();
  connect();
  refreshRuns();
}

function closeSource() {
  if (recreateTimer !== null) {
    clearTimeout(recreateTimer);
    recreateTimer = null;
  }
  if (source !== null) {
    source.close();
    source = null;
  }
}

function connect() {
  closeSource();
  if (!follow || follow.done) return;
  const params = new URLSearchParams();
  if (follow.lastId > 0) params.set("after", String(follow.lastId));
  if (token()) params.set("access_token", token());
  const es = new EventSource(`/v1/runs/${encodeURIComponent(follow.runId)}/events?${params}`);
  source = es;
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (message) => {
      if (es === source) onEvent(type, message);
    });
  }
  es.onopen = () => {
    if (es !== source) return;
    failures = 0;
    setConnection("live");
  };
  es.onerror = () => {
    if (es !== source) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error, 204, or a non-SSE answer): we take over.
      es.close();
      source = null;
      setConnection("reconnecting");
      scheduleRecreate();
    } else {
      setConnection("reconnecting");  // the browser retries by itself, with Last-Event-ID
    }
  };
}

function scheduleRecreate() {
  // Exponential backoff with full jitter, capped at 10 s.
  const ceiling = Math.min(10000, 500 * 2 ** Math.min(failures, 10));
  failures += 1;
  recreateTimer = setTimeout(recreate, 200 + Math.random() * ceiling);
}

async function recreate() {
  recreateTimer = null;
  if (!follow || follow.done) return;
  const runId = follow.runId;
  try {
    const run = await api("GET", `/v1/runs/${encodeURIComponent(runId)}`);
    if (!follow || follow.runId !== runId) return;
    if (TERMINAL_STATUSES.has(run.status) && (run.last_event_id || 0) <= follow.lastId) {
      finish(run.status);  // nothing left to read (the server answered 204)
      return;
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      gone();
      return;
    }
    if (err instanceof ApiError && err.status === 401) {
      showError("Token needed: enter a token above and save it.");
      setConnection("stopped");
      return;
    }
    // The API is unreachable: keep trying with backoff.
    if (follow && follow.runId === runId) scheduleRecreate();
    return;
  }
  connect();
}

function onEvent(type, message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch (_) {
    return;
  }
  if (type === "stream.gap") {
    // No id: it moves no cursor; the events named are gone from the log.
    addLog(`events ${event.from}..${event.to} are no longer retained`);
    saveFollow();
    renderFollow();
    return;
  }
  const id = event.id;
  if (!Number.isInteger(id) || id <= follow.lastId) return;  // seen before a reconnect
  follow.lastId = id;
  const data = event.data || {};
  if (type === "output.message.delta") {
    follow.deltas[id] = String(data.delta ?? "");
  } else if (type === "tool.progress") {
    follow.progress = Number(data.progress) || 0;
  } else {
    if (type === "run.queued") follow.status = "queued";
    if (type === "run.started") follow.status = "running";
    if (type === "run.retrying") follow.status = "queued";
    if (type === "operation.accepted") follow.status = "waiting";
    if (type === "operation.completed") follow.status = "running";
    addLog(`#${id} ${type}${data.reason ? `: ${data.reason}` : ""}${data.error ? `: ${data.error}` : ""}`);
  }
  if (TERMINAL_TYPES.has(type)) {
    finish(type.slice("run.".length));
    return;
  }
  saveFollow();
  renderFollow();
}

function finish(status) {
  closeSource();
  follow.status = status;
  follow.done = true;
  saveFollow();
  setConnection("ended");
  renderFollow();
  refreshRuns();
  refreshStatus();
}

function gone() {
  // Expired, or the embedded backend restarted: nothing runs and nothing can be cancelled.
  closeSource();
  follow.status = "gone";
  follow.done = true;
  addLog("this run no longer exists (expired, or the embedded backend restarted)");
  saveFollow();
  setConnection("gone");
  renderFollow();
  refreshRuns();
}

function addLog(line) {
  follow.log.push(line);
  if (follow.log.length > MAX_LOG) follow.log.splice(0, follow.log.length - MAX_LOG);
}

function fullText() {
  return Object.keys(follow.deltas)
    .map(Number)
    .sort((a, b) => a - b)
    .map((id) => follow.deltas[id])
    .join("");
}

function setConnection(state) {
  $("follow-conn").textContent = state;
  document.body.dataset.connection = state;
}

function renderFollow() {
  $("cancel").disabled = !follow || follow.done;
  if (!follow) return;
  $("follow-run").textContent = follow.runId;
  const status = $("follow-status");
  status.textContent = follow.status;
  status.className = `status status-${follow.status}`;
  $("follow-last").textContent = `last event #${follow.lastId}`;
  const progress = $("progress");
  progress.hidden = follow.progress === null;
  if (follow.progress !== null) progress.value = follow.progress;
  const text = $("text");
  const atBottom = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
  text.textContent = fullText();
  if (atBottom) text.scrollTop = text.scrollHeight;
  const list = $("events");
  list.replaceChildren(...follow.log.map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
  document.body.dataset.followDone = String(follow.done);
}

// --- runs list and operations panel ------------------------------------------------

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  return td;
}

function time(value) {
  if (!value) return "";
  // Heartbeats come as Unix seconds, records as ISO strings.
  const date = new Date(typeof value === "number" ? value * 1000 : value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleTimeString();
}

function ago(seconds) {
  if (typeof seconds !== "number") return time(seconds);
  const age = Math.max(0, Date.now() / 1000 - seconds);
  return `${age.toFixed(1)} s ago (${time(seconds)})`;
}

function refreshRuns() {
  // The runs list (filters, paging, details) is console.js's.
  if (typeof refreshRunList === "function") refreshRunList();
}

async function refreshStatus() {
  let body;
  try {
    body = await api("GET", "/v1/status");
  } catch (_) {
    return;  // refreshRuns reports errors; the panel keeps its last state
  }
  $("ops-queues").replaceChildren(...(body.queues || []).map((q) => {
    const tr = document.createElement("tr");
    tr.append(cell(q.name), cell(q.messages), cell(q.consumers));
    return tr;
  }));
  $("ops-workers").replaceChildren(...(body.workers || []).map((w) => {
    const tr = document.createElement("tr");
    const active = w.concurrency !== undefined ? `${w.active ?? 0}/${w.concurrency}` : w.active;
    tr.append(cell(w.worker_id), cell(ago(w.last_seen ?? w.last_heartbeat)), cell(active));
    return tr;
  }));
  $("ops-runs").replaceChildren(...Object.entries(body.runs_by_status || {}).map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(cell(k), cell(v));
    return tr;
  }));
}

// --- forms -------------------------------------------------------------------------

async function startRun(submit) {
  submit.preventDefault();
  showError("");
  let input;
  try {
    input = JSON.parse($("input").value || "{}");
  } catch (err) {
    showError(`Input is not valid JSON: ${err.message}`);
    return;
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    showError("Input must be a JSON object, e.g. {}");
    return;
  }
  try {
    const run = await api("POST", "/v1/runs", { tool: $("tool").value.trim(), input });
    followRun(run.run_id);
  } catch (err) {
    showError(err.message);
  }
}

async function cancelRun() {
  if (!follow) return;
  try {
    await api("POST", `/v1/runs/${encodeURIComponent(follow.runId)}/cancel`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) gone();
    else showError(err.message);
  }
}

function saveToken(submit) {
  submit.preventDefault();
  const value = $("token").value.trim();
  if (value) localStorage.setItem(KEY_TOKEN, value);
  else localStorage.removeItem(KEY_TOKEN);
  showError("");
  refreshRuns();
  refreshStatus();
  if (follow && !follow.done) connect();
}

function main() {
  $("token").value = token();
  $("token-form").addEventListener("submit", saveToken);
  $("start-form").addEventListener("submit", startRun);
  $("cancel").addEventListener("click", cancelRun);
  follow = loadFollow();
  if (follow) {
    renderFollow();
    if (follow.done) setConnection(follow.status === "gone" ? "gone" : "ended");
    else connect();  // resume after the last event this page saw, before any reload
  }
  refreshStatus();
  setInterval(refreshStatus, POLL_MS);
  document.body.dataset.ready = "true";
}

main();
