// Sluicegate status page. Polls GET /status (and GET /tenants/{name}/shapes for the selected tenant)
// on the admin listener every 2 s; draws with inline SVG. Loads nothing from anywhere else, and puts
// every string the server sends into the page as text, never as markup.
"use strict";

const POLL_MS = 2000;
const KEEP_S = 15 * 60;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
                 "#65a30d", "#9333ea"];

const state = {
  status: null,          // the last /status answer
  times: [],             // history sample times (Unix s), oldest first
  series: new Map(),     // "gate\u0000inflight" -> values aligned with times
  since: null,           // the newest sample time seen
  selected: decodeURIComponent((location.hash.match(/tenant=([^&]*)/) || [])[1] || "") || null,
  shapes: null,
  failures: 0,
  colors: new Map(),
};

// ---- small DOM helpers: text only ----
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function fmt(value, digits) {
  if (value == null || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
  if (abs >= 100 || digits === 0) return Math.round(value).toLocaleString("en");
  return value.toFixed(digits == null ? 1 : digits);
}

function colorOf(name) {
  if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(name);
}

function key(...parts) { return parts.join("\u0000"); }

function series(...parts) { return state.series.get(key(...parts)) || []; }

// ---- data ----
function ingest(status) {
  state.status = status;
  const history = status.history || { t: [], series: [] };
  const before = state.times.length;
  const added = history.t.length;
  state.times.push(...history.t);
  const seen = new Set();
  for (const entry of history.series) {
    const values = entry[entry.length - 1];
    const name = key(...entry.slice(0, -1));
    seen.add(name);
    let column = state.series.get(name);
    if (!column) {
      column = new Array(before).fill(null);
      state.series.set(name, column);
    }
    column.push(...values);
  }
  for (const [name, column] of state.series) {
    if (!seen.has(name)) for (let i = 0; i < added; i++) column.push(null);
  }
  if (state.times.length) state.since = state.times[state.times.length - 1];
  const cutoff = (state.since || 0) - KEEP_S;
  let drop = 0;
  while (drop < state.times.length && state.times[drop] <= cutoff) drop++;
  if (drop) {
    state.times.splice(0, drop);
    for (const column of state.series.values()) column.splice(0, drop);
  }
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

async function poll() {
  try {
    const url = state.since == null ? "/status" : "/status?since=" + encodeURIComponent(state.since);
    ingest(await getJSON(url));
    state.failures = 0;
  } catch (error) {
    state.failures++;
    console.warn(error);
  }
  if (state.selected) {
    try {
      state.shapes = await getJSON("/tenants/" + encodeURIComponent(state.selected) + "/shapes");
    } catch (error) {
      state.shapes = { error: String(error.message || error) };
    }
  }
  render();
  setTimeout(poll, POLL_MS);
}

// ---- rendering ----
function render() {
  const status = state.status;
  const live = document.getElementById("live");
  live.className = "live " + (state.failures ? "bad" : "ok");
  live.textContent = state.failures ? "not answering (" + state.failures + ")" : "live";
  if (!status) return;
  renderFacts(status);
  renderTenants(status);
  renderShapes();
  renderGate(status.gate || {});
  renderUpstream(status);
  renderCharts(status);
  document.getElementById("footer").textContent =
    "Updated " + status.time + " · " + (status.workers || 1) + " worker(s) · history every " +
    ((status.history && status.history.step_s) || 2) + " s";
}

function renderFacts(status) {
  const facts = document.getElementById("facts");
  const items = [
    ["proxy", status.listen],
    ["config", "generation " + status.config.generation + " (" + status.config.hash + ")"],
    ["loaded", status.config.loaded.replace("T", " ").replace(/\.\d+Z$/, " UTC")],
    ["up since", status.started.replace("T", " ").replace(/\.\d+Z$/, " UTC")],
    ["workers", status.workers || 1],
  ];
  facts.replaceChildren(...items.map(([label, value]) => el("div", {}, el("dt", {}, label), el("dd", {}, value))));
}

function recentObserved(name) {
  const values = series("tenant", name, "observed").slice(-30);
  let sum = 0;
  for (const v of values) sum += v || 0;
  return sum;
}

function tightestBucket(buckets) {
  let best = null;
  for (const [resource, bucket] of Object.entries(buckets || {})) {
    const fraction = bucket.burst > 0 ? bucket.level / bucket.burst : 1;
    if (best == null || fraction < best.fraction) best = { resource, fraction, ...bucket };
  }
  return best;
}

function throttleCount(tenant) {
  const add = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);
  return add(tenant.throttled) + add(tenant.would_throttle);
}

function renderTenants(status) {
  const names = Object.keys(status.tenants);
  for (const name of [...names].sort()) colorOf(name);
  names.sort((a, b) => recentObserved(b) - recentObserved(a) ||
    throttleCount(status.tenants[b]) - throttleCount(status.tenants[a]) || a.localeCompare(b));
  const rows = names.map((name) => tenantRow(name, status.tenants[name]));
  document.querySelector("#tenants tbody").replaceChildren(...rows);
}

function tenantRow(name, tenant) {
  const row = el("tr", { tabindex: "0", "data-tenant": name });
  if (name === state.selected) row.classList.add("selected");
  const label = el("div", { class: "tenant" }, swatch(colorOf(name)), el("span", { class: "name" }, name),
    el("span", { class: "plan" }, tenant.plan), tenant.enforce ? null : el("span", { class: "badge" }, "shadow"));
  const bucket = tightestBucket(tenant.buckets);
  let budget = el("span", { class: "none" }, "–");
  if (bucket) {
    const fraction = Math.max(0, Math.min(1, bucket.fraction));
    const bar = el("div", { class: "bar" + (bucket.level <= 0 ? " empty" : fraction < 0.25 ? " low" : "") },
      el("span"));
    bar.firstChild.style.width = (fraction * 100).toFixed(1) + "%";
    budget = el("div", { class: "budget" }, bar,
      el("div", { class: "bar-label" }, bucket.resource + ": " + fmt(bucket.level, 0) + " / " + fmt(bucket.burst, 0)));
  }
  const chips = el("div", { class: "chips" });
  for (const [reason, count] of Object.entries(tenant.throttled || {})) {
    if (count) chips.append(el("span", { class: "chip" }, reason + " " + fmt(count, 0)));
  }
  for (const [reason, count] of Object.entries(tenant.would_throttle || {})) {
    if (count) chips.append(el("span", { class: "chip shadow", title: "would have been throttled" },
      "would " + reason + " " + fmt(count, 0)));
  }
  if (!chips.childNodes.length) chips.append(el("span", { class: "none" }, "none"));
  const spark = svgEl("svg", { class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none" });
  drawLines(spark, [{ values: series("tenant", name, "observed"), color: colorOf(name) }], 120, 24, null);
  row.append(
    el("td", {}, label),
    el("td", {}, budget),
    el("td", { class: "num" }, fmt(tenant.charged_per_s) + " · " + fmt(tenant.observed_per_s)),
    el("td", { class: "num" }, fmt(tenant.in_flight, 0)),
    el("td", { class: "num" }, fmt(tenant.queued, 0)),
    el("td", {}, chips),
    el("td", {}, spark),
  );
  return row;
}

function swatch(color) {
  const node = el("span", { class: "swatch" });
  node.style.background = color;
  return node;
}

function select(name) {
  state.selected = name;
  state.shapes = null;
  history.replaceState(null, "", name ? "#tenant=" + encodeURIComponent(name) : "#");
  for (const row of document.querySelectorAll("#tenants tbody tr")) {
    row.classList.toggle("selected", row.dataset.tenant === name);
  }
  renderShapes();
  if (name) {
    getJSON("/tenants/" + encodeURIComponent(name) + "/shapes")
      .then((report) => { if (state.selected === name) { state.shapes = report; renderShapes(); } })
      .catch((error) => { state.shapes = { error: String(error.message || error) }; renderShapes(); });
  }
}

function renderShapes() {
  const section = document.getElementById("shapes-section");
  section.hidden = !state.selected;
  if (!state.selected) return;
  document.getElementById("shapes-tenant").textContent = state.selected;
  const report = state.shapes;
  const body = document.querySelector("#shapes tbody");
  const scope = document.getElementById("shapes-scope");
  const other = document.getElementById("shapes-other");
  if (!report) {
    scope.textContent = "loading…";
    body.replaceChildren();
    return;
  }
  if (report.error) {
    scope.textContent = report.error;
    body.replaceChildren();
    return;
  }
  const minutes = report.window_s >= 60 ? Math.round(report.window_s / 60) + " min" : report.window_s + " s";
  scope.textContent = "last " + minutes + " · " +
    (report.scope === "shared" ? "all instances (through Redis)" : "this " + (report.workers > 1 ? "host's workers" : "instance")) +
    (report.note ? " · " + report.note : "");
  const rows = report.shapes.map((shape, i) => {
    const learned = shape.cost_learned;
    const estimate = shape.cost_estimated_mean;
    const under = learned != null && estimate != null && learned > 2 * estimate;
    return el("tr", { "data-fingerprint": shape.fingerprint, title: "fingerprint " + shape.fingerprint },
      el("td", { class: "num" }, i + 1),
      el("td", {}, shape.endpoint),
      el("td", { class: "example" }, shape.example),
      el("td", { class: "num" }, fmt(shape.requests, 0)),
      el("td", { class: "num" }, fmt(shape.throttled, 0)),
      el("td", { class: "num" }, fmt(shape.cost_observed_total)),
      el("td", { class: "num" }, fmt(shape.cost_observed_mean)),
      el("td", { class: "num" + (under ? " under" : ""), title: under ? "learned cost is over twice the estimate" : "" },
        fmt(estimate) + " · " + fmt(learned)));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8", class: "none" }, "no requests in the window")));
  body.replaceChildren(...rows);
  const rest = report.other || {};
  other.textContent = rest.requests
    ? "Other shapes: " + fmt(rest.requests, 0) + " requests, " + fmt(rest.cost_observed_total) + " cost units observed, " +
      fmt(rest.throttled, 0) + " throttled."
    : "";
}

function stat(label, value, detail) {
  return el("div", { class: "stat" }, el("span", { class: "label" }, label), el("span", { class: "value" }, value),
    detail ? el("span", { class: "detail" }, detail) : null);
}

function renderGate(gate) {
  const capacity = gate.capacity == null ? "unknown" : fmt(gate.capacity);
  const fill = gate.capacity ? Math.min(1, gate.inflight_cost / gate.capacity) : 0;
  const bar = el("div", { class: "bar" + (fill > 0.9 ? " low" : "") }, el("span"));
  bar.firstChild.style.width = (fill * 100).toFixed(1) + "%";
  document.getElementById("gate").replaceChildren(
    stat("Limit (requests)", fmt(gate.limit, 0), "reason: " + (gate.reason || "–") +
      (gate.detail && gate.detail !== gate.reason ? " — " + gate.detail : "")),
    stat("In flight", fmt(gate.inflight, 0) + (gate.inflight === 1 ? " request" : " requests"),
      "queued " + fmt(gate.queued, 0) + " of " + fmt(gate.max_queue, 0)),
    el("div", { class: "stat" }, el("span", { class: "label" }, "In-flight cost / capacity"),
      el("span", { class: "value" }, fmt(gate.inflight_cost) + " / " + capacity), bar),
    stat("Capacity", gate.capacity_per_s == null ? "–" : fmt(gate.capacity_per_s) + " cost/s",
      fmt(gate.search_threads, 0) + " search threads on " + fmt(gate.data_nodes, 0) + " data nodes"),
    stat("Headroom", fmt(gate.capacity_headroom, 2), gate.contended ? "contended: quiet tenants are waiting" : "uncontended"),
    stat("Horizon", fmt(gate.horizon_ms) + " ms", fmt(gate.threads_per_request, 2) + " threads per request"),
  );
}

function renderUpstream(status) {
  const nodes = (status.upstream || []).map((node) =>
    el("li", {}, el("span", { class: "dot" + (node.healthy ? "" : " down") }), el("span", {}, node.url),
      el("span", { class: "none" }, node.healthy ? "healthy" : "down (" + node.failures + " failures)")));
  document.getElementById("nodes").replaceChildren(...nodes);
  const redis = status.redis || { mode: "local" };
  const text = {
    local: "Not configured: limits are kept in this process.",
    shared: "Shared through " + redis.location + " · " + redis.live_instances + " live instance(s).",
    fallback: "Unreachable: " + redis.location + " — local fallback, reconnecting.",
  }[redis.mode] || redis.mode;
  document.getElementById("redis").textContent = text;
}

// ---- charts ----
function renderCharts(status) {
  const names = Object.keys(status.tenants).sort((a, b) => recentObserved(b) - recentObserved(a)).slice(0, 8);
  chart("observed", names.map((n) => ({ label: n, color: colorOf(n), values: series("tenant", n, "observed") })));
  chart("throttled", names.map((n) => ({ label: n, color: colorOf(n), values: series("tenant", n, "throttled") })));
  chart("gate-cost", [
    { label: "in-flight cost", color: "#2563eb", values: series("gate", "inflight_cost") },
    { label: "capacity", color: "#6b7280", values: series("gate", "capacity"), dashed: true },
  ]);
  const queued = state.times.map((_, i) => {
    let sum = null;
    for (const n of Object.keys(status.tenants)) {
      const v = series("tenant", n, "queued")[i];
      if (v != null) sum = (sum || 0) + v;
    }
    return sum;
  });
  chart("gate-requests", [
    { label: "in flight", color: "#2563eb", values: series("gate", "inflight") },
    { label: "limit", color: "#6b7280", values: series("gate", "limit"), dashed: true },
    { label: "queued", color: "#dc2626", values: queued },
  ]);
}

// The time axis: the last 15 minutes, or less while the proxy has not been up that long (at least 1 min).
function span() {
  const times = state.times;
  if (!times.length) return 60;
  return Math.min(KEEP_S, Math.max(60, times[times.length - 1] - times[0]));
}

function ago(seconds) {
  if (seconds <= 0) return "now";
  return seconds >= 60 ? "−" + Math.round(seconds / 60) + " min" : "−" + Math.round(seconds) + " s";
}

function chart(id, lines) {
  const svg = document.getElementById("chart-" + id);
  const width = 400, height = 150, left = 36, bottom = 16, top = 6;
  svg.replaceChildren();
  let max = 0;
  for (const line of lines) for (const v of line.values) if (v != null && v > max) max = v;
  max = niceMax(max);
  const plotW = width - left - 4, plotH = height - top - bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH * (1 - fraction);
    svg.append(svgEl("line", { class: "axis", x1: left, x2: width - 4, y1: y, y2: y }));
    const tick = svgEl("text", { class: "tick", x: left - 4, y: y + 3, "text-anchor": "end" });
    tick.textContent = fmt(max * fraction);
    svg.append(tick);
  }
  const seconds = span();
  for (const [fraction, anchor] of [[1, "start"], [2 / 3, "middle"], [1 / 3, "middle"], [0, "end"]]) {
    const x = left + plotW * (1 - fraction);
    const tick = svgEl("text", { class: "tick", x, y: height - 3, "text-anchor": anchor });
    tick.textContent = ago(seconds * fraction);
    svg.append(tick);
  }
  const group = svgEl("g", { transform: "translate(" + left + "," + top + ")" });
  svg.append(group);
  drawLines(group, lines, plotW, plotH, max);
  const legend = document.getElementById("legend-" + id);
  legend.replaceChildren(...lines.map((line) => el("span", {}, swatch(line.color), line.label)));
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * magnitude) return step * magnitude;
  return 10 * magnitude;
}

// Lines over the 15-minute axis: x from each sample's time, gaps where a value is missing.
// `max` is the top of the y axis (null: from the values).
function drawLines(svg, lines, width, height, max) {
  const times = state.times;
  if (!times.length) return;
  const end = times[times.length - 1];
  const seconds = span();
  if (max == null) {
    let seen = 0;
    for (const line of lines) for (const v of line.values) if (v != null && v > seen) seen = v;
    max = niceMax(seen);
  }
  for (const line of lines) {
    let d = "", pen = false;
    line.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      const x = width * (1 - (end - times[i]) / seconds);
      const y = height * (1 - Math.min(v, max) / max);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true;
    });
    if (d) {
      svg.append(svgEl("path", { class: "line" + (line.dashed ? " dashed" : ""), d, stroke: line.color }));
    }
  }
}

// ---- wiring ----
function onPick(event) {
  const row = event.target.closest("tr[data-tenant]");
  if (!row) return;
  if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
  event.preventDefault();
  select(row.dataset.tenant === state.selected ? null : row.dataset.tenant);
}

document.addEventListener("DOMContentLoaded", () => {
  const body = document.querySelector("#tenants tbody");
  body.addEventListener("click", onPick);
  body.addEventListener("keydown", onPick);
  poll();
});
