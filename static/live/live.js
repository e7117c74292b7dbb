// The /live/ page's script (no build step). Two lanes, chosen by the server (sync/live_view.py):
// "khala"   — the JavaScript client (clients/js, served as ES modules under /static/khala-client/)
//             mints a sync token with the browser session, bootstraps over HTTP, joins sync:v1 and
//             applies live updates;
// "polling" — the legacy lane: GET /live/state.json every poll_interval_ms.
// Both lanes feed the same render(), keyed by doc_key, so the page looks the same either way.

const config = JSON.parse(document.getElementById("khala-live-config").textContent);
const RUNS = "runtime.run_summaries";
const WORKERS = "runtime.codex_worker_summaries";

const documents = { [RUNS]: new Map(), [WORKERS]: new Map() };
const watermarks = {};

function setState(state, detail) {
  const el = document.getElementById("connection-state");
  el.dataset.state = state;
  el.textContent = detail ? `${state} (${detail})` : state;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
  return td;
}

function code(text) {
  const td = document.createElement("td");
  const c = document.createElement("code");
  c.textContent = text;
  td.appendChild(c);
  return td;
}

function renderTable(tableId, docs, columns, empty) {
  const body = document.querySelector(`#${tableId} tbody`);
  const rows = [...docs.values()].sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
  const previous = new Map([...body.querySelectorAll("tr[data-doc-key]")].map((tr) => [tr.dataset.docKey, tr.dataset.version]));
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(empty);
    td.colSpan = columns.length;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const doc of rows) {
    const tr = document.createElement("tr");
    tr.dataset.docKey = doc.document_id;
    tr.dataset.version = String(doc.latest_seq);
    if (previous.get(doc.document_id) !== tr.dataset.version) tr.classList.add("flash");
    for (const column of columns) tr.appendChild(column(doc));
    body.appendChild(tr);
  }
}

function render() {
  renderTable("runs", documents[RUNS], [
    (d) => code(d.run_id),
    (d) => cell(d.status, `status-${d.status}`),
    (d) => cell(d.latest_seq),
    (d) => cell(d.latest_event_type),
    (d) => cell(d.thread_id),
    (d) => cell(d.updated_at),
  ], "no runs yet");
  renderTable("workers", documents[WORKERS], [
    (d) => code(d.worker_id),
    (d) => cell(d.status, `status-${d.status}`),
    (d) => cell(d.latest_seq),
    (d) => cell(d.adapter),
    (d) => cell(d.last_heartbeat_at),
    (d) => cell(d.updated_at),
  ], "no workers yet");
  const box = document.getElementById("watermarks");
  box.replaceChildren();
  for (const topic of config.topics) {
    const span = document.createElement("span");
    span.className = "watermark";
    span.dataset.topic = topic;
    span.append(`${topic} @ `);
    const c = document.createElement("code");
    c.textContent = watermarks[topic] === undefined ? "?" : String(watermarks[topic]);
    span.appendChild(c);
    box.appendChild(span);
  }
}

// ---- legacy lane: polling ------------------------------------------------------------------

async function poll() {
  try {
    const response = await fetch(config.state_url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const state = await response.json();
    for (const topic of config.topics) {
      documents[topic] = new Map((state.documents[topic] || []).map((d) => [d.doc_key, d.payload]));
      watermarks[topic] = state.topics[topic] ? state.topics[topic].head_watermark : undefined;
    }
    setState("polling", `every ${config.poll_interval_ms} ms`);
    render();
  } catch (error) {
    // The server may be restarting: keep polling, say so on the page.
    setState("error", String(error.message || error));
  } finally {
    setTimeout(poll, config.poll_interval_ms);
  }
}

// ---- Khala lane: the JavaScript client over the WebSocket -----------------------------------

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// The client calls this to connect, and with { sessionId } to refresh the open socket's token in
// band: that token must continue the socket's session.
async function mintToken({ sessionId } = {}) {
  const response = await fetch(config.token_url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(sessionId ? { scopes: config.topics, session_id: sessionId } : { scopes: config.topics }),
  });
  if (!response.ok) throw new Error(`token endpoint answered HTTP ${response.status}`);
  return (await response.json()).data.token;
}

async function startKhalaLane() {
  const { startKhalaLane: start } = await import("./khala_lane.js");
  await start({ config, documents, watermarks, render, setState, mintToken });
}

if (config.lane === "khala") {
  startKhalaLane().catch((error) => setState("error", String(error.message || error)));
} else {
  poll();
}
