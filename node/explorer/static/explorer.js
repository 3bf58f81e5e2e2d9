// pouwnet explorer: hash-routed pages over the node's read-only /explorer/api.
// Plain DOM, no framework: every value goes in through textContent, never HTML.
"use strict";

const API = "/explorer/api/";
const view = document.getElementById("view");
const live = { ws: null, listeners: new Set(), height: null, retry: 1000 };
let renderToken = 0;

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function short(hex, n = 10) {
  return hex.length > 2 * n + 1 ? `${hex.slice(0, n)}…${hex.slice(-6)}` : hex;
}

function link(kind, id, text) {
  if (id === null || id === undefined || id === "") return el("span", { class: "muted" }, "—");
  const label = text !== undefined ? text : short(String(id));
  return el("a", { href: `#/${kind}/${id}`, class: "mono", title: String(id) }, label);
}

function fmtInt(v) {
  return typeof v === "number" ? v.toLocaleString("en-US") : String(v);
}

// On chain an amount is an integer of base units; people read coins with a fixed
// number of decimals, as the pouw CLI shows them (COIN_DECIMALS in consensus/params.py).
const COIN_DECIMALS = 8;
const COIN = 10 ** COIN_DECIMALS;
// Fields that hold amounts (the fee per GMAC, a rate of them), wherever they appear.
const AMOUNTS = new Set(["amount", "balance", "bond", "claim_bond", "fee", "fee_per_gmac",
  "immature", "reward"]);

function fmtCoins(v) {
  if (typeof v !== "number") return String(v);
  const units = Math.round(Math.abs(v));
  const frac = String(units % COIN).padStart(COIN_DECIMALS, "0");
  return `${v < 0 ? "-" : ""}${Math.floor(units / COIN).toLocaleString("en-US")}.${frac}`;
}

function fmtRate(v, unit = "MAC/s") {
  if (v === null || v === undefined) return "—";
  const units = ["", "k", "M", "G", "T", "P"];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}${unit}`;
}

function fmtSeconds(v) {
  if (v === null || v === undefined) return "—";
  return v < 10 ? `${v.toFixed(2)} s` : `${v.toFixed(1)} s`;
}

function fmtPercent(v) {
  return v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)} %`;
}

function fmtTime(ms) {
  const date = new Date(ms);
  const age = (Date.now() - ms) / 1000;
  const abs = Math.abs(age);
  const span = abs < 90 ? `${abs.toFixed(0)} s` : abs < 5400 ? `${(abs / 60).toFixed(0)} min`
    : `${(abs / 3600).toFixed(1)} h`;
  const when = age >= -1 ? `${span} ago` : `in ${span}`;
  return `${date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC")} (${when})`;
}

// Fields whose values are ids of something with a page of its own.
const LINKS = {
  hash: "block", block: "block", block_hash: "block", prev_hash: "block", next: "block",
  txid: "tx", access_log_txid: "tx",
  miner: "account", claimant: "account", sender: "account", to: "account", poster: "account", owner: "account",
  grantee: "account", publisher: "account", by: "account", reader: "account", address: "account",
  miner_address: "account",
  job_id: "job", job_ids: "job", dataset_id: "dataset", dataset: "dataset", model_id: "model",
};
const HEX64 = /^[0-9a-f]{64}$/;

// Any value, rendered by its field name: ids become links, records nested tables.
function value(key, v, record) {
  if (v === null || v === undefined) return el("span", { class: "muted" }, "—");
  if (Array.isArray(v)) {
    if (!v.length) return el("span", { class: "muted" }, "none");
    return el("span", { class: "list" }, v.map((item) => value(key, item, record)));
  }
  if (typeof v === "object") return kvTable(v);
  if (typeof v === "boolean") return el("span", { class: v ? "yes" : "no" }, v ? "yes" : "no");
  // A claim is a block, or a transaction (a job_result), as its record says.
  const kind = key === "claim_id" ? (record && record.claim_kind === "tx" ? "tx" : "block")
    : LINKS[key];
  if (kind && typeof v === "string" && v !== "" && !/^0+$/.test(v)) {
    if (kind !== "dataset" || HEX64.test(v)) return link(kind, v);
  }
  if (key.endsWith("_ms") && typeof v === "number" && v > 1e12) return fmtTime(v);
  if (typeof v === "number") return AMOUNTS.has(key) ? fmtCoins(v) : fmtInt(v);
  if (typeof v === "string" && (HEX64.test(v) || /^0x[0-9a-f]{20,}$/.test(v))) {
    return el("span", { class: "mono", title: v }, short(v, 16));
  }
  return String(v);
}

function kvTable(obj, keys) {
  const rows = (keys || Object.keys(obj)).filter((k) => k in obj).map((k) =>
    el("tr", {}, el("th", {}, k.replaceAll("_", " ")), el("td", { "data-field": k }, value(k, obj[k], obj))));
  return el("table", { class: "kv" }, el("tbody", {}, rows));
}

// A table of records; columns default to every field the records have (so a new
// field or a new kind of record shows without changes here).
function table(records, columns, attrs = {}) {
  if (!records.length) return el("p", { class: "muted empty" }, attrs.empty || "none");
  const cols = columns || [...new Set(records.flatMap((r) => Object.keys(r)))];
  const head = el("tr", {}, cols.map((c) => el("th", {}, (Array.isArray(c) ? c[0] : c).replaceAll("_", " "))));
  const rows = records.map((r) => el("tr", attrs.row ? attrs.row(r) : {}, cols.map((c) => {
    if (Array.isArray(c)) return el("td", {}, c[1](r));
    return el("td", { "data-field": c }, value(c, r[c], r));
  })));
  return el("div", { class: "scroll" }, el("table", { class: "grid", id: attrs.id },
    el("thead", {}, head), el("tbody", {}, rows)));
}

function card(label, content, attrs = {}) {
  return el("div", { class: "card", ...attrs }, el("div", { class: "label" }, label),
    el("div", { class: "value" }, content));
}

// Replace the page's content (absent parts, null or false, are left out).
function show(...children) {
  view.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}

// ------------------------------------------------------------------ data

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  let response;
  try {
    response = await fetch(API + path, { headers: { Accept: "application/json" } });
  } catch (e) {
    throw new ApiError(0, "the node does not answer: is it still running?");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

// ------------------------------------------------------------------ charts

// A small line chart as inline SVG: series = [{name, cls, points: [[x, y]]}].
function lineChart(title, seriesList, yFormat, opts = {}) {
  const W = 600, H = 170, L = 78, R = 12, T = 12, B = 26;
  const points = seriesList.flatMap((s) => s.points.filter((p) => p[1] !== null));
  const box = el("div", { class: "chart", id: opts.id });
  box.append(el("div", { class: "chart-title" }, title));
  if (points.length < 2) {
    box.append(el("p", { class: "muted" }, "not enough blocks yet"));
    return box;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y0 = 0, y1 = Math.max(...ys) * 1.1 || 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "svg-chart", role: "img",
    "aria-label": title });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "gridline" }));
    chart.append(svg("text", { x: L - 6, y: sy(y) + 4, class: "axis", "text-anchor": "end" },
      yFormat(y)));
  }
  chart.append(svg("text", { x: L, y: H - 8, class: "axis" }, `#${x0}`));
  chart.append(svg("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, `#${x1}`));
  chart.append(svg("text", { x: (L + W - R) / 2, y: H - 8, class: "axis", "text-anchor": "middle" },
    "height"));
  for (const s of seriesList) {
    const pts = s.points.filter((p) => p[1] !== null);
    if (s.area && pts.length) {
      const d = `M${sx(pts[0][0])},${sy(0)} ` + pts.map((p) => `L${sx(p[0])},${sy(p[1])}`).join(" ")
        + ` L${sx(pts[pts.length - 1][0])},${sy(0)} Z`;
      chart.append(svg("path", { d, class: `area ${s.cls}` }));
    }
    chart.append(svg("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "),
      class: `series ${s.cls}` }));
    if (s.dots) {
      for (const p of pts) chart.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2, class: `dot ${s.cls}` }));
    }
  }
  box.append(chart);
  if (seriesList.length > 1) {
    box.append(el("div", { class: "legend" }, seriesList.map((s) =>
      el("span", {}, el("i", { class: s.cls }), s.name))));
  }
  return box;
}

// How far below the threshold the ticket fell: a bar, full width = the threshold.
function ticketGauge(share) {
  const W = 400, H = 18;
  const fill = Math.max(1, Math.min(W, share * W));
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "gauge", role: "img",
    "aria-label": `ticket at ${(100 * share).toFixed(2)} % of the threshold` },
  svg("rect", { x: 0, y: 0, width: W, height: H, rx: 4, class: "gauge-bg" }),
  svg("rect", { x: 0, y: 0, width: fill, height: H, rx: 4, class: "gauge-fill" }));
}

// ------------------------------------------------------------------ live feed

function connectLive() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  live.ws = ws;
  const status = document.getElementById("live-status");
  const text = document.getElementById("live-text");
  ws.onopen = () => { live.retry = 1000; status.classList.add("on"); text.textContent = "live"; };
  ws.onmessage = (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch (e) { return; }
    if (event.event === "block") {
      live.height = Math.max(live.height || 0, event.height);
      text.textContent = `live · #${event.height}`;
    }
    for (const listener of live.listeners) listener(event);
  };
  ws.onclose = () => {
    status.classList.remove("on");
    text.textContent = "reconnecting…";
    setTimeout(connectLive, live.retry);
    live.retry = Math.min(live.retry * 2, 15000);
  };
}

// ------------------------------------------------------------------ pages

function homeCards(data) {
  const info = data.info, w = data.window;
  return el("div", { class: "cards" },
    card("Height", el("span", { id: "tip-height" }, fmtInt(info.height))),
    card("Tip", link("block", info.tip, short(info.tip, 6)), { id: "tip-hash" }),
    card("Block interval", fmtSeconds(w.interval_s), { title: `mean over the last ${w.blocks} blocks` }),
    card("Hashrate", el("span", { id: "hashrate" }, fmtRate(w.hashrate_macs)),
      { title: "the network's MAC/s: block work (2^256 / target) over the last blocks' time" }),
    card("Useful work", el("span", { id: "useful-share" }, fmtPercent(w.useful_share)),
      { title: `share of mined MACs on posted jobs over the last ${w.blocks} blocks (${w.useful_blocks} blocks)` }),
    card("Mempool", fmtInt(info.mempool)),
    card("Peers", el("a", { href: "#/peers" }, fmtInt(info.peers))),
    card("Open jobs", el("a", { href: "#/market" }, fmtInt(data.market.open_jobs))));
}

function homeCharts(data) {
  const rows = data.series;
  return el("div", { class: "charts" },
    lineChart("Block interval", [{ name: "interval", cls: "c1", dots: true,
      points: rows.map((r) => [r.height, r.interval_s]) }], (v) => `${v.toFixed(1)} s`,
    { id: "chart-interval" }),
    lineChart(`Network hashrate (${ROLLING_NOTE})`, [{ name: "total", cls: "c2", area: true,
      points: rows.map((r) => [r.height, r.hashrate_macs]) }], (v) => fmtRate(v),
    { id: "chart-hashrate" }),
    lineChart("Useful vs total MAC/s", [
      { name: "total", cls: "c2", points: rows.map((r) => [r.height, r.hashrate_macs]) },
      { name: "useful (posted jobs)", cls: "c3", area: true,
        points: rows.map((r) => [r.height, r.useful_macs_per_s]) }], (v) => fmtRate(v),
    { id: "chart-useful" }));
}

const ROLLING_NOTE = "10-block average";

async function pageHome(token) {
  const data = await api("summary?blocks=60");
  if (token !== renderToken) return;
  const cards = el("div", {}, homeCards(data));
  const charts = el("div", {}, homeCharts(data));
  const list = el("ul", { id: "live-blocks", class: "blocks" });
  const addBlock = (b, fresh) => {
    if (list.querySelector(`[data-hash="${b.hash}"]`)) return;
    const kind = b.useful === undefined ? el("span", { class: "tag live-tag" }, "new")
      : el("span", { class: b.useful ? "tag useful" : "tag" }, b.useful ? "posted job" : "null job");
    const item = el("li", { "data-height": b.height, "data-hash": b.hash, class: fresh ? "fresh" : "" },
      el("span", { class: "h" }, link("block", b.hash, `#${b.height}`)),
      el("span", { class: "mono" }, short(b.hash, 10)),
      el("span", {}, `${b.txs} tx`), kind);
    list.prepend(item);
    while (list.children.length > 15) list.lastChild.remove();
  };
  data.series.slice(-12).forEach((r) => addBlock(r, false));

  show(
    el("h1", {}, `Network ${data.info.network}`),
    cards,
    el("div", { class: "split" },
      charts,
      section("New blocks", el("p", { class: "muted small" }, "live from the node's /ws feed"), list)));

  let refresh = null;
  const onEvent = (event) => {
    if (event.event !== "block" || token !== renderToken) return;
    addBlock(event, true);
    const height = document.getElementById("tip-height");
    if (height && event.height > Number(height.textContent.replaceAll(",", ""))) {
      height.textContent = fmtInt(event.height);
    }
    if (refresh !== null) return;
    refresh = setTimeout(async () => {
      try {
        const fresh = await api("summary?blocks=60");
        if (token !== renderToken) return;
        cards.replaceChildren(homeCards(fresh));
        charts.replaceChildren(homeCharts(fresh));
      } catch (e) {
        // The next block tries again.
      } finally {
        refresh = null;
      }
    }, 1000);
  };
  live.listeners.add(onEvent);
  return () => live.listeners.delete(onEvent);
}

async function pageBlock(token, id) {
  const b = await api(`block/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  const p = b.proof;
  const header = kvTable(b, ["hash", "height", "prev_hash", "next", "timestamp_ms", "miner",
    "reward", "target", "tx_root", "state_root", "extra_nonce", "confirmations", "active"]);
  const proofRows = {
    job: p.job === "posted" ? el("span", {}, el("span", { class: "tag useful" }, "posted job"), " ",
      link("job", p.job_id)) : el("span", { class: "tag" }, p.job === "null" ? "null job" : "unposted job"),
    shape: `${b.job.m} × ${b.job.k} × ${b.job.n}`,
    root_a: b.job.root_a, root_b: b.job.root_b,
    tile: `(${p.tile[0]}, ${p.tile[1]})`,
    ticket: p.ticket, threshold: p.threshold,
    result_root: p.result_root, work: fmtInt(p.work_macs) + " MACs expected",
  };
  const proof = el("table", { class: "kv", id: "proof" }, el("tbody", {},
    Object.entries(proofRows).map(([k, v]) => el("tr", {}, el("th", {}, k.replace("_", " ")),
      el("td", { "data-field": k }, v instanceof Node ? v : value(k, v))))));
  const gauge = p.ticket_share !== undefined ? el("div", { class: "gauge-box" },
    ticketGauge(p.ticket_share),
    el("span", {}, `ticket = ${(100 * p.ticket_share).toPrecision(3)} % of the threshold (target · h·w·k): a win`))
    : el("p", { class: "muted" }, p.error || "the genesis block carries no proof");
  const txs = table(b.txs, [
    ["txid", (t) => link("tx", t.txid, short(t.txid, 12))],
    "kind", "sender", "nonce", "fee",
    ["payload", payloadPairs],
  ], { id: "block-txs", empty: "no transactions", row: (t) => ({ "data-txid": t.txid }) });
  show(
    el("h1", {}, `Block #${fmtInt(b.height)}`, b.active ? null : el("span", { class: "tag warn" }, "side chain")),
    el("div", { class: "split even" }, section("Header", header),
      section("Proof of useful work", proof, gauge)),
    section(`Transactions (${b.tx_count})`, txs));
}

async function pageTx(token, id) {
  const t = await api(`tx/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  show(
    el("h1", {}, `Transaction`, el("span", { class: "tag" }, t.kind.replaceAll("_", " "))),
    t.block === null ? el("p", { class: "tag warn" }, "pending in the mempool") : null,
    kvTable(t, ["txid", "kind", "sender", "nonce", "fee", "block", "height", "confirmations"]),
    section("Payload", kvTable(t.payload)));
}

async function pageAccount(token, id) {
  const a = await api(`account/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  const history = table(a.history, [
    ["height", (h) => h.height === null ? el("span", { class: "tag warn" }, "pending") : link("block", h.block, `#${h.height}`)],
    ["kind", (h) => el("span", { class: "tag" }, h.kind.replaceAll("_", " "))],
    ["txid", (h) => h.txid ? link("tx", h.txid, short(h.txid, 10)) : el("span", { class: "muted" }, "block reward")],
    ["direction", (h) => h.kind === "coinbase" ? "in" : h.direction || "out"],
    ["amount", (h) => {
      const amount = h.amount !== undefined ? h.amount : h.payload && (h.payload.amount ?? h.payload.fee);
      return amount === undefined ? "—" : fmtCoins(amount);
    }],
    ["counterparty", (h) => h.payload && h.payload.to ? value("to", h.direction === "in" ? h.sender : h.payload.to) : "—"],
    ["fee", (h) => h.fee === undefined ? "—" : fmtCoins(h.fee)],
  ], { id: "account-history", empty: `nothing in the last ${a.history_blocks} blocks` });
  show(
    el("h1", {}, "Account ", el("span", { class: "mono small" }, a.address)),
    el("div", { class: "cards" },
      card("Balance", el("span", { id: "balance" }, fmtCoins(a.balance))),
      card("Nonce", fmtInt(a.nonce)),
      card("Next nonce", fmtInt(a.next_nonce)),
      card("Pending", fmtInt(a.pending)),
      card("Immature", fmtCoins(a.immature))),
    section("History", el("p", { class: "muted small" }, `sent, received and mined in the last ${a.history_blocks} blocks, newest first`), history));
}

const EMPTY_STATUS = { open: "no open jobs", mined: "no job in its challenge window",
  paid: "no job paid yet" };
const STATUS_TITLES = {
  open: "Open jobs", mined: "Claims (in the challenge window)", paid: "Payments",
  refunded: "Refunded by a fraud proof", cancelled: "Cancelled",
};

// A transaction's payload as "field: value" pairs (opened rows and branches left out).
function payloadPairs(t) {
  return el("span", { class: "payload" }, Object.entries(t.payload)
    .filter(([k]) => !/(_row|_col|_branch)$/.test(k))
    .map(([k, v]) => el("span", { class: "pair" }, `${k.replaceAll("_", " ")}: `, value(k, v, t.payload))));
}

async function pageMarket(token) {
  const m = await api("market");
  if (token !== renderToken) return;
  const byStatus = new Map();
  for (const job of m.jobs) {
    if (!byStatus.has(job.status)) byStatus.set(job.status, []);
    byStatus.get(job.status).push(job);
  }
  // The columns each table prefers, of those its records have: a claim is a
  // block's or a job_result's, and a field added later shows on the job's page.
  const jobCols = {
    open: ["job_id", "shape", "reward", "fee_per_gmac", "expiry", "poster"],
    mined: ["job_id", "shape", "reward", "claimant", "miner", "claim_kind", "claim_id",
      "block_hash", "result_root", "bond", "due"],
    paid: ["job_id", "shape", "reward", "claimant", "miner", "claim_kind", "claim_id",
      "block_hash", "bond", "due"],
    refunded: ["job_id", "shape", "reward", "poster", "claimant", "miner", "claim_kind",
      "claim_id", "block_hash"],
    cancelled: ["job_id", "shape", "reward", "poster", "expiry"],
  };
  const present = (jobs, cols) => cols.filter((c) =>
    c === "shape" || c === "fee_per_gmac" || jobs.some((j) => c in j));
  const shape = ["shape", (j) => `${j.m}×${j.k}×${j.n}`];
  const rate = ["fee / GMAC", (j) => fmtCoins(j.fee_per_gmac)];
  const sections = [];
  // Open jobs, claims and payments always show; other statuses (a refund, a cancel,
  // any status added later) when a job has them, with every field of their records.
  for (const status of ["open", "mined", "paid", "refunded", "cancelled", ...byStatus.keys()]) {
    if (sections.some((s) => s.dataset.status === status)) continue;
    const jobs = byStatus.get(status) || [];
    if (!jobs.length && !EMPTY_STATUS[status]) continue;
    const cols = present(jobs, jobCols[status] || Object.keys(jobs[0])).map((c) =>
      c === "shape" ? shape : c === "fee_per_gmac" ? rate : c);
    const s = section(STATUS_TITLES[status] || status.replaceAll("_", " "),
      table(jobs, cols, { id: `jobs-${status}`, empty: EMPTY_STATUS[status] }));
    s.dataset.status = status;
    sections.push(s);
  }
  const frauds = m.activity.filter((t) => t.kind === "fraud_proof");
  sections.push(section("Fraud proofs", table(frauds, [
    ["height", (t) => link("block", t.block, `#${t.height}`)],
    ["txid", (t) => link("tx", t.txid, short(t.txid, 10))],
    "sender",
    ["details", payloadPairs],
  ], { id: "fraud-proofs", empty: "no fraud proofs" })));
  const activity = table(m.activity, [
    ["height", (t) => link("block", t.block, `#${t.height}`)],
    ["kind", (t) => el("span", { class: `tag ${t.kind}` }, t.kind.replaceAll("_", " "))],
    ["txid", (t) => link("tx", t.txid, short(t.txid, 10))],
    "sender",
    ["details", payloadPairs],
  ], { id: "market-activity", empty: "no market transactions yet" });
  const models = m.models.length ? m.models.map((model) => el("div", { class: "lineage" },
    el("h3", {}, "Model ", link("model", model.model_id), " by ", value("owner", model.owner)),
    table(model.steps, ["step", "job_ids", "weights_hash", "parent_hash", "dataset", "height"])))
    : [el("p", { class: "muted empty" }, "no model_record yet")];
  show(
    el("h1", {}, "Compute market"),
    el("div", { class: "cards" },
      card("Open jobs", fmtInt(m.info.open_jobs)),
      card("Jobs on chain", fmtInt(m.jobs.length)),
      card("Mined by this node", fmtInt(m.info.jobs_mined))),
    ...sections,
    section("Market transactions", el("p", { class: "muted small" }, `posts, cancels, fraud proofs, model records and claims in the last ${m.activity_blocks} blocks`), activity),
    section("Training lineage", ...models));
}

async function pageJob(token, id) {
  const j = await api(`job/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  show(
    el("h1", {}, "Job ", el("span", { class: "tag" }, j.status)),
    kvTable(j));
}

async function pageModel(token, id) {
  const m = await api(`model/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  show(
    el("h1", {}, "Model ", el("span", { class: "mono small" }, m.model_id)),
    m.owner ? kvTable(m, ["model_id", "owner"]) : null,
    section("Training lineage (model_record)", table(m.steps,
      ["step", "job_ids", "weights_hash", "parent_hash", "dataset", "height"],
      { id: "model-steps", empty: "not trained through the market" })),
    section("Published from a dataset (model_publish)", m.published
      ? el("div", { id: "model-published" }, kvTable(m.published))
      : el("p", { class: "muted empty" }, "not published")));
}

async function pageDatasets(token) {
  const list = await api("datasets");
  if (token !== renderToken) return;
  show(
    el("h1", {}, "Datasets"),
    table(list, [
      ["dataset", (d) => link("dataset", d.dataset_id, short(d.dataset_id, 12))],
      "owner", ["size", (d) => `${fmtInt(d.size)} B`], "metadata", "height", "grants", "reads", "models",
    ], { id: "datasets", empty: "no dataset registered yet" }));
}

async function pageDataset(token, id) {
  const d = await api(`dataset/${encodeURIComponent(id)}`);
  if (token !== renderToken) return;
  const served = new Map(d.served_reads.map((r) => [r.request_nonce, r]));
  const reads = d.events.filter((e) => e.event === "access_log");
  const revokes = d.events.filter((e) => e.event === "revoke");
  show(
    el("h1", {}, "Dataset ", el("span", { class: "mono small" }, d.dataset_id)),
    kvTable(d, ["dataset_id", "owner", "content_root", "size", "chunk_size", "metadata", "height", "hosted"]),
    section("Grants", table(d.grants, ["grantee", "granted_height", "expiry", "revoked_height", "live"],
      { id: "dataset-grants", empty: "no grants" })),
    section("Revocations", table(revokes, ["height", "by", "grantee", "txid"],
      { id: "dataset-revokes", empty: "no revocations" })),
    section(`Reads (${reads.length} access_log${reads.length === 1 ? "" : "s"})`, table(reads, [
      ["height", (e) => link("block", e.block, `#${e.height}`)],
      ["reader", (e) => value("by", e.by)],
      ["request nonce", (e) => el("span", { class: "mono", title: e.request_nonce }, short(e.request_nonce, 12))],
      ["access_log", (e) => link("tx", e.txid, short(e.txid, 10))],
      ["served by this node", (e) => {
        const s = served.get(e.request_nonce);
        return s ? `${s.chunks} chunks at height ${s.tip_height}` : el("span", { class: "muted" }, "not here");
      }],
    ], { id: "dataset-reads", empty: "nobody has read it", row: (e) => ({ "data-nonce": e.request_nonce }) })),
    section("Models published from it", table(d.models,
      ["model_id", "publisher", "weights_hash", "access_log_nonce", "metadata", "height"],
      { id: "dataset-models", empty: "no models published" })),
    section("Audit trail", table(d.events, [
      ["height", (e) => link("block", e.block, `#${e.height}`)],
      ["event", (e) => el("span", { class: `tag ${e.event}` }, e.event.replaceAll("_", " "))],
      "by", ["detail", (e) => e.grantee ? value("grantee", e.grantee)
        : e.model_id ? el("span", {}, "model ", link("model", e.model_id), " from read ", short(e.request_nonce, 8))
          : e.request_nonce ? el("span", { class: "mono" }, short(e.request_nonce, 12)) : "—"],
      "txid",
    ], { id: "dataset-audit" })));
}

async function pagePeers(token) {
  const p = await api("peers");
  if (token !== renderToken) return;
  show(
    el("h1", {}, `Peers (${p.peers.length})`),
    el("p", { class: "muted small" }, `this node: ${short(p.node_id, 12)} · P2P port ${p.p2p_port}`),
    table(p.peers, [
      ["address", (x) => el("span", { class: "mono" }, x.address)],
      ["direction", (x) => el("span", { class: `tag dir-${x.direction}` },
        { out: "outbound", in: "inbound" }[x.direction] || x.direction)],
      ["node", (x) => x.node_id ? el("span", { class: "mono", title: x.node_id }, short(x.node_id, 10)) : "—"],
      "best_height",
      ["latency", (x) => x.latency_ms === null || x.latency_ms === undefined ? "—" : `${Number(x.latency_ms).toFixed(1)} ms`],
      ["connected", (x) => fmtSeconds(x.connected_s)],
    ], { id: "peers", empty: "no peers connected" }),
    section("Bans", table(p.bans, ["who", "reason",
      ["until", (b) => typeof b.until === "number" && b.until > 1e9 ? fmtTime(b.until * 1000) : value("until", b.until)],
    ], { id: "bans", empty: "nobody is banned" })),
    section("P2P counters", kvTable(p.p2p)));
}

async function pageSearch(token, query) {
  const hit = await api(`search?q=${encodeURIComponent(query)}`);
  if (token !== renderToken) return;
  location.replace(`#/${hit.kind}/${hit.id}`);
}

function notFound(message, status) {
  show(el("div", { class: "notfound", id: "not-found" },
    el("h1", {}, "Not found"),
    el("p", {}, message),
    el("p", { class: "muted small" }, status === 400 ? "That does not look like a valid id."
      : status === 404 ? "This node's chain has nothing by that id." : ""),
    el("p", {}, el("a", { href: "#/" }, "Back to the explorer's home"))));
}

// ------------------------------------------------------------------ routing

const ROUTES = {
  "": pageHome, block: pageBlock, tx: pageTx, account: pageAccount, market: pageMarket,
  job: pageJob, model: pageModel, datasets: pageDatasets, dataset: pageDataset,
  peers: pagePeers, search: pageSearch,
};
let cleanup = null;

// The route the view shows once rendered, in view.dataset.shown: whoever drives the page
// (a test, a script) knows the content is this route's and not the previous one's, which
// stays in place while the next page loads.
async function route() {
  const token = ++renderToken;
  const hash = location.hash;
  if (cleanup) { cleanup(); cleanup = null; }
  const [kind = "", ...rest] = hash.replace(/^#\/?/, "").split("/");
  const arg = decodeURIComponent(rest.join("/"));
  document.querySelectorAll("nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.nav === (kind || "home") || (kind === "dataset" && a.dataset.nav === "datasets")));
  const page = ROUTES[kind];
  if (!page) { notFound(`There is no page "${kind}".`, 404); view.dataset.shown = hash; return; }
  view.classList.add("loading");
  try {
    const result = await page(token, arg);
    if (token === renderToken && typeof result === "function") cleanup = result;
  } catch (e) {
    if (token !== renderToken) return;
    if (e instanceof ApiError) notFound(e.message, e.status);
    else { console.error(e); notFound("This page could not be shown.", 0); }
  } finally {
    if (token === renderToken) {
      view.classList.remove("loading");
      view.dataset.shown = hash;
    }
  }
  if (token === renderToken) document.title = `pouwnet explorer · ${kind || "home"}`;
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("search-input");
  const query = input.value.trim();
  if (!query) return;
  input.value = "";
  const target = `#/search/${encodeURIComponent(query)}`;
  if (location.hash === target) route();
  else location.hash = target;
});
window.addEventListener("hashchange", route);
connectLive();
route();
