// The operator's console, next to dashboard.js (which follows one run): run filters and
// details (why a run failed, retry, cancel), dead letters, and live graphs of the
// process's own metrics (GET /v1/metrics). Plain script, no build step; it uses the
// helpers of dashboard.js ($, api, cell, followRun, showError).
"use strict";

const GRAPH_POINTS = 60;
const series = {};  // name -> [values], one per poll
let lastSnapshot = null;
let selected = null;  // the run shown in the detail panel

function when(value) {
  // One format everywhere: the date and the time, local.
  if (!value) return "";
  const date = new Date(typeof value === "number" ? value * 1000 : value);
  if (Number.isNaN(date.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function seconds(from, to) {
  if (!from || !to) return "";
  return `${((new Date(to) - new Date(from)) / 1000).toFixed(1)} s`;
}

function explain(err) {
  if (err && err.status === 401) return "Token needed: enter a token above and save it.";
  if (err && err.status === 403) return "This token's owner is not an operator (RUNRELAY_ADMIN_OWNERS).";
  return err ? err.message : "";
}

// --- runs: filters and paging ------------------------------------------------------

let pageSize = 25;

function filteredPath() {
  const params = new URLSearchParams({ limit: String(Math.min(200, pageSize)) });
  const status = $("filter-status").value;
  const session = $("filter-session").value.trim();
  if (status) params.set("status", status);
  if (session) params.set("session_id", session);
  return `/v1/runs?${params}`;
}

async function refreshRunList() {
  let body;
  try {
    body = await api("GET", filteredPath());
  } catch (err) {
    showError(explain(err));
    return;
  }
  const tool = $("filter-tool").value.trim();
  const search = $("filter-id").value.trim();
  const runs = (body.runs || []).filter((run) =>
    (!tool || run.tool === tool) && (!search || run.run_id.includes(search)));
  const rows = runs.map((run) => {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.run_id;
    if (selected === run.run_id) tr.className = "followed";
    const id = cell(run.run_id.slice(0, 16));
    id.title = run.run_id;
    id.className = "muted";
    const status = cell(run.status);
    status.className = `status status-${run.status}`;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "details";
    open.addEventListener("click", () => showRun(run.run_id));
    const followButton = document.createElement("button");
    followButton.type = "button";
    followButton.textContent = "follow";
    followButton.addEventListener("click", () => followRun(run.run_id));
    const actions = document.createElement("td");
    actions.append(open, " ", followButton);
    tr.append(id, cell(run.tool), status, cell(when(run.created_at)), actions);
    return tr;
  });
  $("runs").replaceChildren(...rows);
  $("runs-more").hidden = (body.runs || []).length < pageSize || pageSize >= 200;
}

// --- one run -----------------------------------------------------------------------

function field(name, value, cls) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value === undefined || value === null ? "" : String(value);
  if (cls) dd.className = cls;
  return [dt, dd];
}

async function showRun(runId) {
  selected = runId;
  const panel = $("detail");
  let run;
  try {
    run = await api("GET", `/v1/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    $("detail-id").textContent = runId;
    const gone = err.status === 404;
    $("detail-error").textContent = gone ? "This run no longer exists (expired, or the embedded backend restarted)." : explain(err);
    $("detail-error").hidden = false;
    $("detail-fields").replaceChildren(...(gone ? field("status", "gone", "status status-gone") : []));
    $("detail-retry").disabled = $("detail-cancel").disabled = true;
    panel.dataset.state = gone ? "gone" : "error";
    return;
  }
  panel.dataset.state = run.status;
  $("detail-id").textContent = run.run_id;
  const error = $("detail-error");
  error.textContent = run.error ? `Why it failed: ${run.error}` : "";
  error.hidden = !run.error;
  $("detail-fields").replaceChildren(
    ...field("status", run.status, `status status-${run.status}`),
    ...field("tool", run.tool),
    ...field("input", JSON.stringify(run.input)),
    ...field("attempts", run.attempt),
    ...field("worker", run.worker || "—"),
    ...field("session", run.session_id),
    ...field("queued", when(run.created_at)),
    ...field("started", when(run.started_at)),
    ...field("finished", when(run.finished_at)),
    ...field("waited", seconds(run.created_at, run.started_at)),
    ...field("ran", seconds(run.started_at, run.finished_at)),
    ...field("retry of", run.retry_of || "—"),
  );
  const ended = ["completed", "failed", "cancelled"].includes(run.status);
  $("detail-retry").disabled = !ended;
  $("detail-cancel").disabled = ended;
  await showTimeline(run.run_id);
}

async function showTimeline(runId) {
  let page;
  try {
    page = await api("GET", `/v1/runs/${encodeURIComponent(runId)}/events?limit=1000`);
  } catch (_) {
    return;
  }
  const items = (page.events || []).filter((e) => e.type !== "output.message.delta").map((e) => {
    const li = document.createElement("li");
    const detail = e.type === "run.failed" ? ` — ${e.data.error || ""}` :
      e.type.startsWith("operation.") ? ` — ${JSON.stringify(e.data)}` : "";
    li.textContent = `#${e.id} ${when(e.created_at)} ${e.type}${detail}`;
    return li;
  });
  const text = (page.events || []).filter((e) => e.type === "output.message.delta")
    .map((e) => e.data.delta).join("");
  $("detail-events").replaceChildren(...items);
  $("detail-text").textContent = text;
}

async function retrySelected() {
  if (!selected) return;
  try {
    const run = await api("POST", `/v1/runs/${encodeURIComponent(selected)}/retry`);
    await showRun(run.run_id);
    refreshRunList();
  } catch (err) {
    showError(explain(err));
  }
}

async function cancelSelected() {
  if (!selected) return;
  try {
    await api("POST", `/v1/runs/${encodeURIComponent(selected)}/cancel`);
    await showRun(selected);
  } catch (err) {
    showError(explain(err));
  }
}

// --- dead letters ------------------------------------------------------------------

async function refreshDead() {
  let body;
  try {
    body = await api("GET", "/v1/dead");
  } catch (err) {
    $("dead-note").textContent = explain(err);
    return;
  }
  $("dead-note").textContent = body.dead_letters.length ? "" : "No dead letters.";
  $("dead").replaceChildren(...body.dead_letters.map((letter) => {
    const tr = document.createElement("tr");
    tr.dataset.letterId = letter.id;
    const replay = document.createElement("button");
    replay.type = "button";
    replay.textContent = "replay";
    replay.addEventListener("click", () => replayDead(letter.id));
    const td = document.createElement("td");
    td.append(replay);
    const preview = cell(letter.body_preview.slice(0, 80));
    preview.className = "muted";
    tr.append(cell(letter.queue), cell(`${Math.round(letter.age_s)} s`), cell(letter.reason), preview, td);
    return tr;
  }));
}

async function replayDead(id) {
  try {
    await api("POST", `/v1/dead/${encodeURIComponent(id)}/replay`);
    $("dead-action").textContent = `Replayed ${id} to its queue.`;
    document.body.dataset.replayed = id;
  } catch (err) {
    $("dead-action").textContent = explain(err);
  }
  refreshDead();
}

async function purgeDead() {
  if (!confirm("Remove every dead letter?")) return;
  try {
    const body = await api("DELETE", "/v1/dead");
    $("dead-action").textContent = `Purged ${body.purged}.`;
  } catch (err) {
    $("dead-action").textContent = explain(err);
  }
  refreshDead();
}

// --- graphs ------------------------------------------------------------------------

function push(name, value) {
  const values = series[name] || (series[name] = []);
  values.push(value);
  if (values.length > GRAPH_POINTS) values.shift();
}

function total(metric) {
  return Object.values(metric || {}).reduce((a, b) => a + b, 0);
}

function sparkline(name, label, unit) {
  const values = series[name] || [];
  const max = Math.max(1e-9, ...values);
  const points = values.map((v, i) => `${(i / (GRAPH_POINTS - 1)) * 100},${30 - (v / max) * 28}`).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  const figure = document.createElement("figure");
  figure.className = "spark";
  figure.dataset.series = name;
  figure.dataset.points = String(values.length);
  figure.innerHTML = `<figcaption>${label} <b>${last.toFixed(unit === "" ? 0 : 1)}${unit}</b></figcaption>` +
    `<svg viewBox="0 0 100 30" preserveAspectRatio="none"><polyline points="${points}"/></svg>`;
  return figure;
}

async function refreshGraphs() {
  let snap;
  try {
    snap = await api("GET", "/v1/metrics");
  } catch (err) {
    $("graphs-note").textContent = explain(err);
    return;
  }
  $("graphs-note").textContent = "";
  const m = snap.metrics;
  if (lastSnapshot) {
    const dt = Math.max(1e-3, snap.at - lastSnapshot.at);
    const rate = (now, before) => Math.max(0, (now - before) / dt);
    push("runs_created", rate(total(m.runrelay_api_runs_created), total(lastSnapshot.metrics.runrelay_api_runs_created)));
    for (const status of ["completed", "failed", "cancelled"]) {
      const now = (m.runrelay_worker_runs_finished || {})[status] || 0;
      const before = (lastSnapshot.metrics.runrelay_worker_runs_finished || {})[status] || 0;
      push(`runs_${status}`, rate(now, before));
    }
    push("events_sent", rate(total(m.runrelay_api_events_sent), total(lastSnapshot.metrics.runrelay_api_events_sent)));
  }
  push("open_streams", total(m.runrelay_api_open_streams));
  // Over the last 10 s of deliveries; 0 while nothing was delivered.
  const latency = snap.deliver_latency_s || {};
  push("latency_p50", latency.p50 == null ? 0 : latency.p50 * 1000);
  push("latency_p99", latency.p99 == null ? 0 : latency.p99 * 1000);
  for (const q of snap.queues) {
    push(`queue:${q.name}`, q.messages);
    push(`consumers:${q.name}`, q.consumers);
  }
  lastSnapshot = snap;
  const figures = [
    sparkline("runs_created", "runs created", "/s"),
    sparkline("runs_completed", "completed", "/s"),
    sparkline("runs_failed", "failed", "/s"),
    sparkline("runs_cancelled", "cancelled", "/s"),
    sparkline("events_sent", "events sent", "/s"),
    sparkline("open_streams", "open streams", ""),
    sparkline("latency_p50", "emit→deliver p50", " ms"),
    sparkline("latency_p99", "emit→deliver p99", " ms"),
    ...snap.queues.map((q) => sparkline(`queue:${q.name}`, `${q.name} depth`, "")),
    ...snap.queues.map((q) => sparkline(`consumers:${q.name}`, `${q.name} consumers`, "")),
  ];
  $("graphs").replaceChildren(...figures);
}

// --- worker history ----------------------------------------------------------------

async function refreshWorkerHistory() {
  let body;
  try {
    body = await api("GET", "/v1/workers");
  } catch (err) {
    $("history-note").textContent = explain(err);
    return;
  }
  $("history-note").textContent = body.workers.length ? "" : "No worker in the last hour.";
  $("worker-history").replaceChildren(...body.workers.map((w) => {
    const tr = document.createElement("tr");
    tr.dataset.workerId = w.worker_id;
    tr.dataset.left = w.left || "live";
    const left = cell(w.left === "clean" ? `stopped ${when(w.left_at)}` :
      w.left === "lost" ? `lost ${when(w.left_at)} (heartbeat ran out)` : "live");
    left.className = `left-${w.left || "live"}`;
    const id = cell(w.worker_id.slice(0, 24));
    id.title = w.worker_id;
    tr.append(id, cell([w.host, w.pid].filter((x) => x !== undefined).join(" · ")),
      cell(when(w.started_at)), cell(when(w.last_seen)), left);
    return tr;
  }));
}

// --- tools: a form from each input schema ------------------------------------------

async function refreshTools() {
  let body;
  try {
    body = await api("GET", "/v1/tools");
  } catch (err) {
    $("tools-note").textContent = explain(err);
    return;
  }
  $("tools-note").textContent = "";
  $("tools").replaceChildren(...body.tools.map(toolForm));
}

function toolForm(spec) {
  const form = document.createElement("form");
  form.className = "tool-form";
  form.dataset.tool = spec.name;
  const head = document.createElement("h3");
  head.textContent = spec.name;
  const about = document.createElement("p");
  about.className = "muted";
  about.textContent = (spec.description || "").split("\n")[0];
  form.append(head, about);
  const schema = spec.input_schema || {};
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const label = document.createElement("label");
    label.textContent = `${name}${required.has(name) ? " *" : ""}`;
    const input = document.createElement("input");
    input.name = name;
    input.dataset.type = prop.type || "string";
    input.type = prop.type === "integer" || prop.type === "number" ? "number" : "text";
    if (prop.type === "number") input.step = "any";
    if (prop.default !== undefined && prop.default !== null) input.placeholder = String(prop.default);
    input.required = required.has(name);
    input.title = prop.description || "";
    label.append(input);
    form.append(label);
  }
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = `Start ${spec.name}`;
  form.append(submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = {};
    for (const el of form.querySelectorAll("input")) {
      if (el.value === "") continue;
      const type = el.dataset.type;
      input[el.name] = type === "integer" || type === "number" ? Number(el.value) :
        type === "boolean" ? el.value === "true" : el.value;
    }
    try {
      const run = await api("POST", "/v1/runs", { tool: spec.name, input });
      followRun(run.run_id);
      showRun(run.run_id);
    } catch (err) {
      showError(explain(err));
    }
  });
  return form;
}

function consoleMain() {
  for (const id of ["filter-status", "filter-tool", "filter-session", "filter-id"]) {
    $(id).addEventListener("input", refreshRunList);
  }
  $("runs-more").addEventListener("click", () => { pageSize += 25; refreshRunList(); });
  $("detail-retry").addEventListener("click", retrySelected);
  $("detail-cancel").addEventListener("click", cancelSelected);
  $("dead-refresh").addEventListener("click", refreshDead);
  $("dead-purge").addEventListener("click", purgeDead);
  refreshRunList();
  refreshDead();
  refreshGraphs();
  refreshTools();
  refreshWorkerHistory();
  setInterval(refreshWorkerHistory, POLL_MS);
  setInterval(refreshRunList, POLL_MS);
  setInterval(refreshGraphs, POLL_MS);
  setInterval(refreshDead, POLL_MS * 2);
  setInterval(() => { if (selected) showRun(selected); }, POLL_MS);
  document.body.dataset.console = "ready";
}

consoleMain();
