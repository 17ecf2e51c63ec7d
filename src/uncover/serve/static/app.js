// uncover workbench: plain JavaScript, no build step. Every form comes from an operation's config schema;
// every result view from the result's JSON. Text from the server is only ever set as textContent.
"use strict";

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("uncover-token", params.get("token"));
  history.replaceState(null, "", location.pathname);
}
const TOKEN = sessionStorage.getItem("uncover-token") || "";
const OPS = {};
const state = { jobs: [], checked: new Set(), shown: {}, doneCount: -1 };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(path, body) {
  const opts = { headers: { "X-Uncover-Token": TOKEN } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text.slice(0, 200) }; }
  if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status}`);
  return data;
}

function withToken(path) { return `${path}?token=${encodeURIComponent(TOKEN)}`; }

function showError(target, err) {
  target.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
}

// ---- header ------------------------------------------------------------------------------------
async function refreshModel() {
  const m = await api("/api/model");
  document.getElementById("model-name").textContent = `${m.name} (${m.family}, ${m.n_layers} layers)`;
  document.getElementById("fingerprint").textContent = m.fingerprint;
  document.getElementById("applied").textContent = m.applied.length ? `edited by ${m.applied.join(", ")}` : "";
  return m;
}

// ---- forms from the config schema -----------------------------------------------------------------
function fieldInput(f, value) {
  const id = `f-${Math.random().toString(36).slice(2)}`;
  const t = f.type;
  let input;
  if (f.choices) {
    input = el("select", { name: f.name, id });
    if (f.optional) input.append(el("option", { value: "", text: "(none)" }));
    for (const c of f.choices) input.append(el("option", { value: c, text: c }));
    input.value = value === null || value === undefined ? "" : value;
  } else if (t === "bool") {
    input = el("input", { type: "checkbox", name: f.name, id });
    input.checked = !!value;
    return el("label", { class: "check", title: f.help }, input, f.name);
  } else if (t.startsWith("list[str]")) {
    input = el("textarea", { name: f.name, id, rows: 2, placeholder: "one per line" });
    input.value = Array.isArray(value) ? value.join("\n") : (value ?? "");
  } else {
    const numeric = /^(int|float)( \| None)?$/.test(t);
    input = el("input", { name: f.name, id, type: numeric ? "number" : "text", step: t.startsWith("float") ? "any" : null });
    input.value = Array.isArray(value) ? value.join(",") : (value ?? "");
  }
  input.dataset.type = t;
  return el("label", { title: f.help }, `${f.name}${f.required ? " *" : ""}`, input);
}

function readField(input) {
  const t = input.dataset.type || "";
  if (input.type === "checkbox") return input.checked;
  const raw = input.value;
  if (raw === "") return null;
  if (t.startsWith("list[str]")) return raw.split("\n").filter((s) => s.length);
  if (t.startsWith("list[int]") || t.startsWith("list[float]")) {
    const parts = raw.split(",").map((s) => s.trim());
    if (parts.every((s) => s !== "" && !isNaN(Number(s)))) return parts.map(Number);
    return t.includes("str") ? raw : parts;  // e.g. layers "0:30:5"
  }
  if (/^(int|float)/.test(t) && !isNaN(Number(raw))) return Number(raw);
  return raw;
}

// a form's config: every filled field, typed by the schema (empty optional fields are left out)
function formConfig(form) {
  const config = {};
  for (const input of form.querySelectorAll("[name]")) {
    const v = readField(input);
    if (v !== null) config[input.name] = v;
  }
  return config;
}
window.uncover = { formConfig };

function buildForm(op, container, target) {
  const values = { ...(op.example || {}) };
  const fields = el("div", { class: "fields" });
  for (const f of op.config.fields) {
    const v = f.name in values ? values[f.name] : f.default;
    fields.append(fieldInput(f, v));
  }
  const run = el("button", { type: "submit", class: "run", text: `Run ${op.name}` });
  const form = el("form", { "data-op": op.name }, el("p", { class: "hint", text: op.help }), fields, run);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const config = formConfig(form);
    try {
      const job = await api("/api/jobs", { op: op.name, config });
      target.replaceChildren(el("p", { class: "hint", text: `job ${job.id} ${job.status}…` }));
      state.shown[job.id] = target;
      pollJobs();
    } catch (err) { showError(target, err); }
  });
  container.replaceChildren(form);
}

// ---- results -------------------------------------------------------------------------------------
function table(columns, rows, limit = 50) {
  const t = el("table", { class: "small" });
  t.append(el("tr", {}, ...columns.map((c) => el("th", { text: c }))));
  for (const r of rows.slice(0, limit)) {
    t.append(el("tr", {}, ...columns.map((c) => el("td", { text: fmt(r[c]) }))));
  }
  return t;
}

function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (v === null || v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

async function showResult(jobId, target) {
  let res;
  try { res = await api(`/api/jobs/${jobId}/result`); } catch (err) { showError(target, err); return; }
  const job = res.job;
  const links = el("div", { class: "row" },
    el("a", { href: withToken(`/api/jobs/${jobId}/file`), text: "download result (.safetensors)" }), " · ",
    el("a", { href: withToken(`/api/jobs/${jobId}/report`), target: "_blank", text: "HTML report" }));
  const actions = el("div", { class: "row" });
  const later = [];  // shown below the result
  if (job.provenance && !job.op.startsWith("rerun") && job.op !== "compare") {
    actions.append(el("button", { class: "rerun", text: "Rerun", onclick: async () => {
      try { const j = await api(`/api/jobs/${jobId}/rerun`, {}); state.shown[j.id] = target; pollJobs(); }
      catch (err) { showError(target, err); }
    } }));
  }
  if (job.changes_weights && !job.reverted) {
    actions.append(el("button", { class: "revert", text: "Revert this edit", onclick: async () => {
      try {
        const r = await api(`/api/jobs/${jobId}/revert`, {});
        await refreshModel();
        actions.replaceChildren(el("span", { class: "reverted", text: `reverted; weights ${r.fingerprint}` }));
        pollJobs();
      } catch (err) { showError(actions, err); }
    } }));
    if (job.op === "edit") {
      const traced = el("div", { class: "trace-result" });
      actions.append(el("button", { class: "trace", text: "Causal trace before and after", onclick: async () => {
        try { const j = await api(`/api/jobs/${jobId}/trace`, {}); state.shown[j.id] = traced; pollJobs(); }
        catch (err) { showError(traced, err); }
      } }));
      later.push(traced, generalisationPanel(jobId));
    }
  } else if (job.reverted) {
    actions.append(el("span", { class: "reverted", text: "reverted" }));
  }
  const special = el("div", { class: "special" });
  const fig = el("div", { class: "plot figure" });
  target.replaceChildren(el("h3", { text: res.title }), el("pre", { class: "summary", text: res.summary }),
    actions, special, fig, links,
    el("details", {}, el("summary", { text: `table (${res.n_records} rows)` }), table(res.columns, res.records)),
    el("details", {}, el("summary", { text: "provenance" }),
      el("pre", { text: JSON.stringify(res.provenance, null, 1) })), ...later);
  const view = res.view;
  if (view.type === "patch") renderPatchGrid(jobId, view, special);
  else if (view.type === "trace") renderTrace(jobId, view, special);
  else if (view.type === "circuit") renderCircuit(view, special);
  else if (view.type === "steer") renderSteer(view, special);
  else if (view.type === "edit") renderEdit(view, special);
  else if (view.type === "compare") renderCompare(view, special);
  else if (view.type === "latent") renderLatent(view, special);
  else if (view.type === "graph") renderGraph(jobId, view, special);
  try {
    const figure = await api(`/api/jobs/${jobId}/figure`);
    if (figure) Plotly.newPlot(fig, figure.data, figure.layout, { responsive: true });
  } catch (err) { fig.append(el("p", { class: "hint", text: `no figure: ${err.message}` })); }
}

// ---- jobs panel ------------------------------------------------------------------------------------
let polling = null;
async function pollJobs() {
  try { state.jobs = await api("/api/jobs"); } catch (err) { return; }
  renderJobs();
  let busy = false;
  const doneNow = state.jobs.filter((j) => j.status === "done").length;
  if (doneNow !== state.doneCount) { state.doneCount = doneNow; refreshFiles(); }
  for (const j of state.jobs) {
    if (j.status === "queued" || j.status === "running") busy = true;
    const target = state.shown[j.id];
    if (target && !["queued", "running"].includes(j.status)) {
      delete state.shown[j.id];
      if (j.status === "done") { showResult(j.id, target); if (j.changes_weights || j.op.startsWith("rerun")) refreshModel(); }
      else target.replaceChildren(el("p", { class: `status-${j.status}`, text: `job ${j.id} ${j.status}${j.error ? ": " + j.error : ""}` }));
    }
  }
  clearTimeout(polling);
  polling = setTimeout(pollJobs, busy ? 400 : 3000);
}

function renderJobs() {
  const list = document.getElementById("job-list");
  list.replaceChildren(...state.jobs.map((j) => {
    const p = j.progress || {};
    const frac = p.total ? (p.n + 1) / p.total : null;
    const bar = el("div", { class: "bar" }, el("div"));
    if (frac !== null) bar.firstChild.style.width = `${Math.round(100 * frac)}%`;
    else if (j.status === "running") bar.firstChild.style.width = "100%";
    const check = el("input", { type: "checkbox", title: "compare", onchange: (e) => {
      if (e.target.checked) state.checked.add(j.id); else state.checked.delete(j.id);
    } });
    check.checked = state.checked.has(j.id);
    const li = el("li", { "data-job": j.id, "data-status": j.status },
      el("div", { class: "row" }, check,
        el("span", { class: "op", text: j.op, onclick: () => openJob(j) }),
        el("span", { class: `status status-${j.status}`, text: j.status }),
        j.seconds !== null ? el("span", { class: "hint", text: `${j.seconds.toFixed(1)} s` }) : null),
      (j.status === "running" || j.status === "queued") ? bar : null,
      el("div", { class: "hint", text: [j.forwards ? `${j.forwards} forward passes` : "",
        p.total ? `${p.desc || ""} ${p.n + 1}/${p.total}` : "", (j.messages || []).slice(-1)[0] || ""].filter(Boolean).join(" · ") }),
      j.error ? el("div", { class: "error", text: j.error }) : null);
    if (j.status === "running" || j.status === "queued") {
      li.append(el("button", { class: "cancel", text: "Cancel", onclick: async () => {
        await api(`/api/jobs/${j.id}/cancel`, {}); pollJobs();
      } }));
    }
    return li;
  }));
}

async function refreshFiles() {
  let files;
  try { files = await api("/api/files"); } catch (err) { return; }
  const list = document.getElementById("file-list");
  // results only: not the weights inside an SAE folder (a folder with cfg.json), which the features view lists
  const saeDirs = new Set(files.filter((f) => f.name.endsWith("cfg.json")).map((f) => f.name.slice(0, -"cfg.json".length)));
  const isResult = (n) => n.endsWith(".safetensors") && !saeDirs.has(n.slice(0, n.lastIndexOf("/") + 1));
  list.replaceChildren(...files.filter((f) => isResult(f.name)).map((f) => el("li", { "data-file": f.name },
    el("button", { class: "open", text: "open", onclick: async () => {
      const target = document.getElementById("operations-result");
      switchTab("operations");
      try { const j = await api("/api/open", { name: f.name }); showResult(j.id, target); pollJobs(); }
      catch (err) { showError(target, err); }
    } }), " ", el("span", { text: f.name }))));
}

function openJob(j) {
  const target = document.getElementById("operations-result");
  switchTab("operations");
  if (j.status === "done") showResult(j.id, target);
  else target.replaceChildren(el("p", { text: `job ${j.id} ${j.status}${j.error ? ": " + j.error : ""}` }));
}

document.getElementById("compare-btn").addEventListener("click", async () => {
  const ids = [...state.checked];
  const target = document.getElementById("operations-result");
  switchTab("operations");
  if (ids.length !== 2) { showError(target, new Error("check exactly two jobs of one operation to compare")); return; }
  try { const j = await api("/api/compare", { a: ids[0], b: ids[1] }); state.shown[j.id] = target; pollJobs(); }
  catch (err) { showError(target, err); }
});

// ---- prompt explorer -------------------------------------------------------------------------------
let promptView = null;
document.getElementById("prompt-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("prompt-out");
  const body = { prompt: document.getElementById("prompt-text").value };
  const a = document.getElementById("prompt-answer").value, w = document.getElementById("prompt-wrong").value;
  body.lens_positions = document.getElementById("prompt-all").checked ? "all" : "last";
  if (a) body.answer = a;
  if (w) body.wrong = w;
  const banner = document.getElementById("banner");
  banner.hidden = true;
  try { promptView = await api("/api/prompt", body); }
  catch (err) { banner.textContent = err.message; banner.hidden = false; return; }
  out.hidden = false;
  renderPrompt(promptView);
});

function renderPrompt(v) {
  document.getElementById("prompt-tokens").replaceChildren(...v.tokens.map((t, i) => el("span", { title: `id ${v.ids[i]}`, text: t })));
  document.getElementById("prompt-top").replaceChildren(el("tr", {}, el("th", { text: "token" }), el("th", { text: "p" })),
    ...v.top.map(([t, , p]) => el("tr", {}, el("td", { text: JSON.stringify(t) }), el("td", { text: fmt(p) }))));
  const x = v.lens.positions.map((i) => `${i}:${v.tokens[i]}`);
  Plotly.newPlot("lens-plot", [{ type: "heatmap", z: v.lens.probs, x, y: v.lens.layers.map((l) => `L${l}`),
    text: v.lens.tokens, texttemplate: "%{text}", colorscale: "Blues", reversescale: true, zmin: 0, zmax: 1,
    hovertemplate: "layer %{y}, %{x}<br>top-1 %{text} (p=%{z:.3f})<extra></extra>" }],
  { margin: { t: 10, l: 50 }, height: Math.max(300, 16 * v.lens.layers.length), xaxis: { type: "category" } },
  { responsive: true });
  const ls = document.getElementById("att-layer"), hs = document.getElementById("att-head");
  ls.replaceChildren(...v.attention.map((_, l) => el("option", { value: l, text: l })));
  hs.replaceChildren(...v.attention[0].map((_, h) => el("option", { value: h, text: h })));
  drawAttention();
  const d = v.dla;
  document.getElementById("dla-title").textContent = `${JSON.stringify(d.answer)} vs ${JSON.stringify(d.wrong)} (logit diff ${fmt(d.logit_diff)})`;
  Plotly.newPlot("dla-plot", [{ type: "heatmap", z: d.heads, x: d.heads[0].map((_, h) => `H${h}`),
    y: d.heads.map((_, l) => `L${l}`), colorscale: "RdBu", zmid: 0,
    hovertemplate: "%{y}%{x}: %{z:.3f}<extra></extra>" },
  { type: "bar", x: d.labels.filter((l) => !/^L\d+H\d+$/.test(l)),
    y: d.contributions.filter((_, i) => !/^L\d+H\d+$/.test(d.labels[i])), xaxis: "x2", yaxis: "y2", name: "other components" }],
  { grid: { rows: 1, columns: 2, pattern: "independent" }, margin: { t: 10 }, height: 360, showlegend: false },
  { responsive: true });
}

function drawAttention() {
  if (!promptView) return;
  const l = Number(document.getElementById("att-layer").value), h = Number(document.getElementById("att-head").value);
  const toks = promptView.tokens.map((t, i) => `${i}:${t}`);
  Plotly.newPlot("att-plot", [{ type: "heatmap", z: promptView.attention[l][h], x: toks, y: toks, colorscale: "Viridis",
    zmin: 0, zmax: 1, hovertemplate: "query %{y} attends to key %{x}: %{z:.3f}<extra></extra>" }],
  { margin: { t: 10, l: 80 }, height: 380, yaxis: { autorange: "reversed", type: "category" }, xaxis: { type: "category" } },
  { responsive: true });
}
document.getElementById("att-layer").addEventListener("change", drawAttention);
document.getElementById("att-head").addEventListener("change", drawAttention);

// ---- tabs and start ---------------------------------------------------------------------------------
function switchTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== `tab-${name}`; });
}
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => switchTab(b.dataset.tab)));

async function start() {
  try { await refreshModel(); } catch (err) {
    const banner = document.getElementById("banner");
    banner.textContent = `${err.message}`; banner.hidden = false; return;
  }
  for (const op of await api("/api/operations")) OPS[op.name] = op;
  document.querySelectorAll(".op-form[data-op]").forEach((box) => {
    const op = OPS[box.dataset.op];
    if (op) buildForm(op, box, box.parentElement.querySelector(".op-result"));
  });
  const slider = document.getElementById("steer-scale");
  const scaleField = document.querySelector("form[data-op='steer'] [name='scale']");
  if (scaleField) {  // the steering playground: the slider sets the form's scale (and runs it when released)
    slider.value = scaleField.value;
    const show = () => { document.getElementById("steer-scale-value").textContent = `scale ${slider.value}`; };
    show();
    slider.addEventListener("input", () => { scaleField.value = slider.value; show(); });
    slider.addEventListener("change", () => scaleField.form.requestSubmit());
    scaleField.addEventListener("input", () => { slider.value = scaleField.value; show(); });
  }
  const sel = document.getElementById("op-select");
  sel.replaceChildren(...Object.keys(OPS).map((n) => el("option", { value: n, text: `${n}${OPS[n].long ? " (long)" : ""}` })));
  const pick = () => {
    const op = OPS[sel.value];
    document.getElementById("op-help").textContent = op.help;
    buildForm(op, document.getElementById("op-form-any"), document.getElementById("operations-result"));
  };
  sel.addEventListener("change", pick);
  pick();
  document.body.dataset.ready = "1";
  pollJobs();
}
start();
