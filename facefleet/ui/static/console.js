// facefleet web console: live run status, SVG line charts (losses, ROC) drawn from the REST API, logs.
// No library: the API is read with the session cookie (GET only); every change is a server-checked form post.
"use strict";

const FINISHED = ["succeeded", "failed", "cancelled"];
const COLORS = ["#2f5fd0", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#e67700", "#495057"];
const SVG = "http://www.w3.org/2000/svg";

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toFixed(10));
  return ticks;
}

function fmt(value) {
  const abs = Math.abs(value);
  if (abs === 0) return "0";
  if (abs >= 10000 || abs < 0.01) return value.toExponential(1);
  return String(+value.toPrecision(3));
}

// series: [{label, points: [[x, y], ...]}]; opts: {xLabel, yLabel, unit: true for [0,1] axes, diagonal}
function lineChart(container, series, opts) {
  container.textContent = "";
  const drawn = series.filter((s) => s.points.length > 0);
  if (drawn.length === 0) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = opts.empty || "nothing recorded yet";
    container.appendChild(p);
    return;
  }
  const W = 560, H = 300, L = 56, R = 12, T = 10, B = 40;
  let xs = [], ys = [];
  for (const s of drawn) for (const [x, y] of s.points) { xs.push(x); ys.push(y); }
  let [x0, x1] = opts.unit ? [0, 1] : [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = opts.unit ? [0, 1] : [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  if (!opts.unit) { const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": opts.title || "chart" });
  el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fff", stroke: "#d0d5dd" }, svg);
  for (const t of niceTicks(y0, y1, 5)) {
    if (t < y0 || t > y1) continue;
    el("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eef0f3" }, svg);
    const label = el("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 11, fill: "#555" }, svg);
    label.textContent = fmt(t);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    el("line", { x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, stroke: "#888" }, svg);
    const label = el("text", { x: sx(t), y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#555" }, svg);
    label.textContent = fmt(t);
  }
  const xl = el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 12, fill: "#333" }, svg);
  xl.textContent = opts.xLabel || "";
  const yl = el("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "font-size": 12, fill: "#333",
    transform: `rotate(-90 14 ${(T + H - B) / 2})` }, svg);
  yl.textContent = opts.yLabel || "";
  if (opts.diagonal) {
    el("line", { x1: sx(0), y1: sy(0), x2: sx(1), y2: sy(1), stroke: "#aaa", "stroke-dasharray": "4 4" }, svg);
  }
  drawn.forEach((s, i) => {
    const d = s.points.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    el("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.8, "data-series": s.label }, svg);
  });
  container.appendChild(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  drawn.forEach((s, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(s.label));
    legend.appendChild(item);
  });
  container.appendChild(legend);
}

function isLoss(name) { return !name.startsWith("eval/") && /loss/.test(name); }

async function drawLoss(container, runIds) {
  const all = await Promise.all(runIds.map((id) => api(`/v1/runs/${id}/metrics`).then((r) => r.json())));
  const series = [];
  if (runIds.length === 1) {
    for (const [name, points] of Object.entries(all[0].series)) {
      if (isLoss(name)) series.push({ label: name, points: points.map((p) => [p.step, p.value]) });
    }
  } else {
    all.forEach((body, i) => {
      const names = Object.keys(body.series).filter(isLoss);
      const name = names.includes("loss") ? "loss" : names[0];
      const points = name ? body.series[name].map((p) => [p.step, p.value]) : [];
      series.push({ label: `run ${runIds[i]}${name ? " " + name : ""}`, points });
    });
  }
  lineChart(container, series, { xLabel: "step", yLabel: "loss", title: "loss curves", empty: "no loss recorded yet" });
}

async function rocOf(runId) {
  try {
    return await (await api(`/v1/runs/${runId}/plots/roc.json`)).json();
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

async function drawRoc(container, runIds) {
  const docs = await Promise.all(runIds.map(rocOf));
  const series = [];
  docs.forEach((doc, i) => {
    if (!doc) return;
    for (const [setName, modes] of Object.entries(doc.sets || {})) {
      for (const [mode, curve] of Object.entries(modes)) {
        if (runIds.length > 1 && mode !== "cosine") continue;
        const label = `${runIds.length > 1 ? `run ${runIds[i]} ` : ""}${setName} ${mode} (AUC ${fmt(curve.auc)})`;
        series.push({ label, points: curve.fpr.map((x, j) => [x, curve.tpr[j]]) });
      }
    }
  });
  lineChart(container, series, { xLabel: "false accept rate", yLabel: "true accept rate", unit: true,
    diagonal: true, title: "ROC", empty: "no evaluation yet (the ROC appears when the run has been evaluated)" });
}

function drawCharts() {
  for (const container of document.querySelectorAll("[data-chart]")) {
    const runIds = container.dataset.runs.split(",").filter(Boolean);
    const draw = container.dataset.chart === "roc" ? drawRoc : drawLoss;
    draw(container, runIds).then(() => { container.dataset.drawn = "1"; }).catch((error) => {
      container.textContent = `could not load: ${error.message}`;
      container.dataset.drawn = "error";
    });
  }
}

async function loadLogs() {
  for (const pre of document.querySelectorAll("[data-logs]")) {
    try {
      pre.textContent = (await (await api(`/v1/runs/${pre.dataset.logs}/logs?tail=300`)).text()) || "(empty)";
      pre.scrollTop = pre.scrollHeight;
    } catch (error) {
      pre.textContent = error.message;
    }
  }
}

function updateRun(node, run) {
  const set = (field, text) => { const f = node.querySelector(`[data-field=${field}]`); if (f) f.textContent = text; };
  const status = node.querySelector("[data-field=status]");
  if (status) { status.textContent = run.status; status.className = `status status-${run.status}`; }
  const bar = node.querySelector("[data-field=progress]");
  if (bar) bar.value = run.progress;
  set("stage", run.stage);
  const steps = node.querySelector("[data-field=steps]");
  if (steps) steps.textContent = steps.textContent.replace(/^\d+ \/ \d+/, `${run.step} / ${run.total_steps}`);
  set("eta", run.eta_seconds && !FINISHED.includes(run.status) ? `ETA ${Math.round(run.eta_seconds)} s` : "");
}

function followLiveRuns() {
  const live = [...document.querySelectorAll("[data-live-run]")];
  if (live.length === 0) return;
  const onRunPage = document.querySelector("section.progress[data-live-run]") !== null;
  const timer = setInterval(async () => {
    let active = 0;
    for (const node of live) {
      if (node.dataset.done) continue;
      try {
        const run = await (await api(`/v1/runs/${node.dataset.liveRun}`)).json();
        updateRun(node, run);
        if (FINISHED.includes(run.status)) {
          node.dataset.done = "1";
          if (onRunPage) { window.location.reload(); return; }
        } else {
          active += 1;
        }
      } catch (_) { active += 1; }
    }
    if (onRunPage) { drawCharts(); loadLogs(); }
    if (active === 0) clearInterval(timer);
  }, 3000);
}

function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

function compareSelection() {
  const button = document.querySelector("[data-compare-button]");
  if (!button) return;
  const picks = [...document.querySelectorAll("input.pick")];
  const update = () => {
    const n = picks.filter((p) => p.checked).length;
    button.disabled = n < 2 || n > 4;
    button.textContent = `Compare selected (${n}; 2–4)`;
  };
  picks.forEach((p) => p.addEventListener("change", update));
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  loadLogs();
  followLiveRuns();
  confirmForms();
  compareSelection();
});
