// uncover workbench: the dedicated result views (a patching grid, a circuit graph, steered generations,
// an edit's rows, two results side by side). Loaded before app.js, whose helpers (el, api, fmt, table,
// showError) they call at run time. Text from the server is only ever set as textContent.
"use strict";

function color(v, lo, hi) {
  if (v === null || v === undefined) return "#fff";
  const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
  const x = Math.max(-1, Math.min(1, v / m));
  const c = Math.round(255 * (1 - Math.abs(x)));
  return x >= 0 ? `rgb(${c},${c},255)` : `rgb(255,${c},${c})`;
}

function renderPatchGrid(jobId, view, target, extra = {}, caption = null) {
  const grid = view.per === "head_pos" ? view.grid.map((layer) => layer.map((h) => Math.max(...h))) : view.grid;
  const flat = grid.flat().filter((v) => v !== null);
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const cols = view.per === "pos" ? view.str_tokens : grid[0].map((_, h) => `H${h}`);
  const t = el("table", { class: "small grid", "data-kind": extra.kind || null });
  t.append(el("tr", {}, el("th", { text: "layer" }), ...cols.map((c) => el("th", { text: c }))));
  const detail = el("div", { class: "cell-detail" });
  grid.forEach((row, layer) => {
    const tr = el("tr", {}, el("th", { text: `L${layer}` }));
    row.forEach((v, j) => {
      const td = el("td", { class: "cell", "data-index": `${layer},${j}`, title: `L${layer} ${cols[j]}: ${fmt(v)}`,
        text: v === null ? "" : v.toFixed(2) });
      td.style.background = color(v, lo, hi);
      if (v !== null && Math.abs(v) > 0.6 * Math.max(Math.abs(lo), Math.abs(hi))) td.style.color = "#fff";
      td.addEventListener("click", async () => {
        t.querySelectorAll(".selected").forEach((x) => x.classList.remove("selected"));
        td.classList.add("selected");
        let index = [layer, j];
        if (view.per === "head_pos") {
          const pos = view.grid[layer][j].indexOf(v);
          index = [layer, j, pos];
        }
        detail.replaceChildren(el("p", { class: "hint", text: "patching…" }));
        try { renderCell(await api(`/api/jobs/${jobId}/cell`, { index, ...extra }), detail); }
        catch (err) { showError(detail, err); }
      });
      tr.append(td);
    });
    t.append(tr);
  });
  const what = caption || `${view.metric}${view.normalised ? " recovery" : ""} per ${view.receivers ? `sender head (path into ${view.receivers.join(", ")})` : "site"}`;
  target.append(el("p", { class: "hint", text: `${what}; click a cell` }), t, detail);
}

function renderTrace(jobId, view, target) {
  for (const [kind, grid] of Object.entries(view.grids)) {
    const box = el("div", { class: "trace-grid" });
    target.append(el("h4", { text: `${kind}: p(${view.answer}) restored − corrupted` }), box);
    renderPatchGrid(jobId, { grid, per: "pos", str_tokens: view.str_tokens }, box, { kind },
      `indirect effect per (layer, token) of restoring the clean ${kind} state`);
  }
}

function renderCell(cell, target) {
  const col = (title, d) => el("div", {}, el("h4", { text: title }),
    el("p", { text: `p(${cell.answer}) = ${fmt(d.tracked[0])}` + (cell.wrong ? `, p(${cell.wrong}) = ${fmt(d.tracked[1])}` : "") }),
    table(["token", "p"], d.top.map(([tok, , p]) => ({ token: tok, p }))));
  const titles = cell.titles || ["base run", "patched", "source run"];
  const again = cell.recomputed !== undefined ? ` (this run: ${fmt(cell.recomputed)})` : "";
  target.replaceChildren(el("h4", { class: "cell-label", text: `${cell.label}: ${fmt(cell.value)}${again}` }),
    el("div", { class: "side" }, col(titles[0], cell.base), col(titles[1], cell.patched),
      col(titles[2], cell.source)));
}

function layerOf(name) {
  if (name === "input") return -1;
  if (name === "logits") return 1e6;
  const m = /(\d+)/.exec(name);
  return m ? Number(m[1]) : 0;
}

function renderCircuit(view, target) {
  const slider = el("input", { type: "range", id: "edge-slider", min: 1, max: Math.max(1, view.edges.length),
    value: Math.min(20, view.edges.length) });
  const count = el("span", { class: "edge-count" });
  const svgBox = el("div");
  const draw = () => {
    const n = Number(slider.value);
    count.textContent = `${n} of ${view.n_edges} edges`;
    const edges = view.edges.slice(0, n).map(([s, r, v]) => [s, r.replace(/\.[qkv]$/, "").replace(/<[qkv]>$/, ""), v]);
    const nodes = [...new Set(edges.flatMap(([s, r]) => [s, r]))];
    // columns: layers left to right (input first, logits last); rows: the head, MLPs on top
    const layers = [...new Set(nodes.map(layerOf))].sort((a, b) => a - b);
    const headOf = (nd) => { const m = /H(\d+)/.exec(nd); return m ? Number(m[1]) : null; };
    const maxHead = Math.max(0, ...nodes.map((nd) => headOf(nd) ?? 0));
    const W = 860, H = 90 + 36 * (maxHead + 2);
    const pos = {};
    for (const nd of nodes) {
      const col = layers.indexOf(layerOf(nd));
      const x = 50 + col * (W - 100) / Math.max(1, layers.length - 1);
      const h = headOf(nd);
      const row = /^MLP/.test(nd) ? maxHead + 1 : h !== null ? h : (maxHead + 1) / 2;
      pos[nd] = [x, H - 30 - row * (H - 60) / (maxHead + 1)];
    }
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "circuit"); svg.setAttribute("width", W); svg.setAttribute("height", H);
    const vmax = Math.max(...edges.map((e) => Math.abs(e[2])), 1e-9);
    for (const [s, r, v] of edges) {
      const line = document.createElementNS(NS, "line");
      const [x1, y1] = pos[s], [x2, y2] = pos[r];
      Object.entries({ x1, y1, x2, y2, stroke: v >= 0 ? "#2563eb" : "#dc2626",
        "stroke-width": 0.5 + 4 * Math.abs(v) / vmax, opacity: 0.7 }).forEach(([k, val]) => line.setAttribute(k, val));
      const title = document.createElementNS(NS, "title"); title.textContent = `${s} → ${r}: ${fmt(v)}`;
      line.append(title); svg.append(line);
    }
    for (const nd of nodes) {
      const [x, y] = pos[nd];
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", 4); dot.setAttribute("fill", "#475569");
      svg.append(dot);
      const text = document.createElementNS(NS, "text");
      text.setAttribute("x", x); text.setAttribute("y", y - 7); text.setAttribute("text-anchor", "middle");
      text.setAttribute("font-size", "11"); text.setAttribute("class", "node"); text.textContent = nd;
      svg.append(text);
    }
    svgBox.replaceChildren(svg);
  };
  slider.addEventListener("input", draw);
  target.append(el("div", { class: "row" }, el("label", {}, "edges", slider), count), svgBox);
  draw();
}

function renderSteer(view, target) {
  const rows = view.prompts.map((p, i) => ({ prompt: p, without: view.plain[i], with: view.steered[i],
    "score without": view.score_plain ? view.score_plain[i] : null, "score with": view.score_steered ? view.score_steered[i] : null }));
  const kl = view.kl === null || view.kl === undefined ? "not measured"
    : `${fmt(view.kl)} nats/token over ${view.neutral_tokens} neutral tokens`;
  target.append(el("div", { class: "steer-metrics row" },
    el("span", { class: "steer-kl", text: `KL(unsteered ‖ steered) on neutral text: ${kl}` }), " · ",
    el("span", { class: "steer-score", text: `sentiment score shift: ${fmt(view.score_shift ?? 0)}` })),
  el("h4", { text: "Generations without and with steering" }),
  table(["prompt", "without", "with", "score without", "score with"], rows));
}

function renderLatent(view, target) {
  // the result of `sae steer`: the latent's activation per token, then generations and next tokens side by side
  const vmax = Math.max(1e-9, ...view.activation.map((a) => a ?? 0));
  const toks = el("div", { class: "tokens" }, ...view.str_tokens.map((t, p) => {
    const s = el("span", { title: `activation ${fmt(view.activation[p])}`, text: t });
    s.style.background = `rgba(37,99,235,${(0.05 + 0.8 * Math.max(0, view.activation[p] ?? 0) / vmax).toFixed(3)})`;
    return s;
  }));
  const col = (title, gen, k) => el("div", {}, el("h4", { text: title }), el("p", { class: "generation", text: gen }),
    table(["token", "p"], [...view.shown].sort((a, b) => b[k] - a[k]).map((r) => ({ token: r[0], p: r[k] }))));
  const what = view.mode === "ablate" ? `latent ${view.latent} ablated`
    : view.mode === "steer" ? `latent ${view.latent} + ${fmt(view.scale)}` : `latent ${view.latent} clamped at ${fmt(view.scale)}`;
  target.append(el("p", { class: "hint", text: `activation of latent ${view.latent} on each token (${view.hook})` }), toks,
    el("p", { class: "latent-kl", text: `KL(before ‖ after), next token: ${fmt(view.kl)} nats` }),
    el("div", { class: "side" }, col("before", view.generation_before, 2), col(`after (${what})`, view.generation_after, 3)));
}

function renderCompare(view, target) {
  const cols = view.figures.map((f, i) => {
    const box = el("div", { class: "plot" });
    if (f) setTimeout(() => Plotly.newPlot(box, f.data, f.layout, { responsive: true }), 0);
    return el("div", {}, el("h4", { text: `${"AB"[i]}: ${view.titles[i]}` }), box);
  });
  target.append(el("div", { class: "side compare" }, ...cols));
}

function renderEdit(view, target) {
  const rows = view.rows.map((r) => ({ prompt: r.prompt, stage: r.stage, p_target: r.p_target,
    top: (r.top || []).map((t) => `${t[0]} ${fmt(t[1])}`).join(", "), generation: r.generation }));
  target.append(el("h4", { text: "Before and after" }), table(["prompt", "stage", "p_target", "top", "generation"], rows));
}

// an applied edit's paraphrases and neighbourhood prompts, scored before (edit off) and after (edit on)
function generalisationPanel(jobId) {
  const paras = el("textarea", { name: "paraphrases", rows: 3, placeholder: "one per line (empty: CounterFact's, when it knows the subject)" });
  const neigh = el("textarea", { name: "neighbours", rows: 3, placeholder: "one per line: other subjects whose answer is the true object" });
  const truth = el("input", { name: "true", placeholder: "default: top prediction before" });
  const out = el("div", { class: "generalisation-result" });
  const lines = (t) => t.value.split("\n").filter((x) => x.trim());
  const run = el("button", { type: "button", class: "generalisation", text: "Paraphrases and neighbours before and after", onclick: async () => {
    out.replaceChildren(el("p", { class: "hint", text: "scoring…" }));
    try {
      const g = await api(`/api/jobs/${jobId}/generalisation`, { paraphrases: lines(paras), neighbours: lines(neigh), true: truth.value || null });
      if (!paras.value.trim()) paras.value = g.paraphrases.join("\n");
      if (!neigh.value.trim()) neigh.value = g.neighbours.join("\n");
      if (!truth.value) truth.value = g.true;
      renderGeneralisation(g, out);
    } catch (err) { showError(out, err); }
  } });
  return el("div", { class: "generalisation-panel" }, el("h4", { text: "Edit-then-explain: does the edit generalise, and stay local?" }),
    el("div", { class: "row" }, el("label", {}, "paraphrases (should now give the new object)", paras),
      el("label", {}, "neighbourhood prompts (should keep the true object)", neigh), el("label", {}, "true object", truth), run), out);
}

function renderGeneralisation(g, target) {
  const byPrompt = {};
  for (const r of g.rows) {
    const key = `${r.metric}\u0000${r.prompt}`;
    byPrompt[key] = byPrompt[key] || { metric: r.metric, prompt: r.prompt };
    byPrompt[key][`${r.stage}: logp new − true`] = r.logp_new - r.logp_true;
    byPrompt[key][`${r.stage}: ok`] = r.success ? "✓" : "✗";
  }
  const cols = ["metric", "prompt", "before: logp new − true", "before: ok", "after: logp new − true", "after: ok"];
  const score = (st) => Object.entries(g.scores[st] || {}).map(([m, v]) => `${m} ${fmt(v)}`).join(", ");
  target.replaceChildren(el("p", { class: "generalisation-scores", text: `new ${JSON.stringify(g.new)} vs true ${JSON.stringify(g.true)} · before: ${score("before")} · after: ${score("after")}` }),
    table(cols, Object.values(byPrompt)));
}
