// uncover workbench: the attribution graph (the `graph` operation's result) as an interactive node-link view.
// Nodes sit at (token position, layer): embeddings at the bottom, logits on top. Two sliders prune the graph
// (the server reruns the library's pruning at those shares of the influence); clicking nodes selects them and
// "Group" merges the selection into a named supernode (drawn as one node, its links summed), kept in
// circuit-tracer's [[name, node_id, ...], ...] form. Loaded after app.js (el, api, fmt, showError).
// Text from the server is only ever set as textContent.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const GRAPH_COLORS = { feature: "#6b7280", error: "#d4a017", embedding: "#10b981", logit: "#8b5cf6" };
const GROUP_COLORS = ["#e11d48", "#2563eb", "#16a34a", "#f59e0b", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

function svgEl(tag, attrs = {}, title = null) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (title !== null) { const t = document.createElementNS(SVG_NS, "title"); t.textContent = title; e.append(t); }
  return e;
}

function renderGraph(jobId, view, target) {
  const state = { view, selected: new Set(), groups: [] };  // groups: [{name, ids}]
  const slider = (name, value, min) => el("input", { type: "range", name, min, max: 1, step: 0.005, value });
  const nodeT = slider("node_threshold", view.node_threshold, 0.05);
  const edgeT = slider("edge_threshold", view.edge_threshold, 0.05);
  const counts = el("span", { class: "graph-count hint" });
  const name = el("input", { name: "supernode", placeholder: "supernode name" });
  const selInfo = el("span", { class: "graph-selection hint", text: "click nodes to select them" });
  const list = el("ul", { class: "supernode-list" });
  const json = el("textarea", { class: "supernode-json", rows: 2, readonly: "readonly" });
  const box = el("div", { class: "graph-box" });
  const groupOf = () => {
    const m = {};
    state.groups.forEach((g, k) => g.ids.forEach((id) => { m[id] = k; }));
    return m;
  };

  const draw = () => {
    const v = state.view, member = groupOf();
    const present = new Set(v.nodes.map((n) => n.id));
    for (const id of [...state.selected]) if (!present.has(id)) state.selected.delete(id);
    // layout: x by position (nodes of one (layer, position) slot side by side), y by layer
    const W = 980, colW = (W - 80) / Math.max(1, v.tokens.length), H = 70 + 34 * (v.n_layers + 2);
    const y = (layer) => H - 40 - (layer + 1) * (H - 80) / (v.n_layers + 1);
    const slots = {};
    for (const n of v.nodes) (slots[`${n.layer}/${n.pos}`] ||= []).push(n);
    const xy = {};
    for (const members of Object.values(slots)) {
      members.forEach((n, r) => { xy[n.id] = [40 + colW * (n.pos + 0.5 + 0.8 * ((r + 1) / (members.length + 1) - 0.5)), y(n.layer)]; });
    }
    // what is drawn: a node, or its supernode (at the mean position of the members present)
    const shown = {}, drawn = [];
    for (const n of v.nodes) {
      const k = member[n.id];
      if (k === undefined) { shown[n.id] = n.id; drawn.push({ key: n.id, node: n, at: xy[n.id] }); continue; }
      shown[n.id] = `group:${k}`;
    }
    state.groups.forEach((g, k) => {
      const pts = g.ids.filter((id) => xy[id]).map((id) => xy[id]);
      if (!pts.length) return;
      const at = [pts.reduce((a, p) => a + p[0], 0) / pts.length, pts.reduce((a, p) => a + p[1], 0) / pts.length];
      drawn.push({ key: `group:${k}`, group: k, at, size: pts.length });
    });
    const agg = {};  // links between what is drawn, weights summed (links inside a supernode dropped)
    for (const [s, t, w] of v.links) {
      const a = shown[s], b = shown[t];
      if (a === undefined || b === undefined || a === b) continue;
      agg[`${a}\u0000${b}`] = (agg[`${a}\u0000${b}`] || 0) + w;
    }
    const pos = Object.fromEntries(drawn.map((d) => [d.key, d.at]));
    const vmax = Math.max(1e-12, ...Object.values(agg).map(Math.abs));
    const svg = svgEl("svg", { class: "graph", width: W, height: H });
    for (let layer = -1; layer <= v.n_layers; layer++) {  // rows: embeddings, each layer, the logits
      const label = svgEl("text", { x: 4, y: y(layer) + 4, "font-size": 10, class: "graph-layer" });
      label.textContent = layer < 0 ? "emb" : layer === v.n_layers ? "logit" : `L${layer}`;
      svg.append(label);
    }
    v.tokens.forEach((t, p) => {
      const label = svgEl("text", { x: 40 + colW * (p + 0.5), y: H - 8, "text-anchor": "middle", "font-size": 11, class: "graph-token" });
      label.textContent = t; svg.append(label);
    });
    for (const [key, w] of Object.entries(agg)) {
      const [a, b] = key.split("\u0000");
      if (Math.abs(w) < 0.01 * vmax) continue;
      const [x1, y1] = pos[a], [x2, y2] = pos[b];
      svg.append(svgEl("line", { x1, y1, x2, y2, class: "graph-link", stroke: w >= 0 ? "#2563eb" : "#dc2626",
        "stroke-width": (0.4 + 4 * Math.abs(w) / vmax).toFixed(2), opacity: 0.55 }, `${a} → ${b}: ${fmt(w)}`));
    }
    const imax = Math.max(1e-12, ...v.nodes.map((n) => Math.max(0, n.influence)));
    for (const d of drawn) {
      const [cx, cy] = d.at;
      let shape;
      if (d.group !== undefined) {
        const g = state.groups[d.group];
        shape = svgEl("rect", { x: cx - 14, y: cy - 9, width: 28, height: 18, rx: 6, class: "supernode",
          "data-group": d.group, fill: GROUP_COLORS[d.group % GROUP_COLORS.length] }, `${g.name}: ${g.ids.join(", ")}`);
        const label = svgEl("text", { x: cx, y: cy - 12, "text-anchor": "middle", "font-size": 11, class: "supernode-label" });
        label.textContent = g.name; svg.append(shape, label);
        continue;
      }
      const n = d.node, r = 3.5 + 7 * Math.sqrt(Math.max(0, n.influence) / imax);
      shape = svgEl(n.kind === "error" ? "rect" : "circle", n.kind === "error"
        ? { x: cx - r, y: cy - r, width: 2 * r, height: 2 * r } : { cx, cy, r },
      `${n.label}\nactivation ${fmt(n.activation)}\ninfluence ${fmt(n.influence)}`);
      shape.setAttribute("class", `graph-node kind-${n.kind}${state.selected.has(n.id) ? " selected" : ""}`);
      shape.setAttribute("data-id", n.id);
      shape.setAttribute("fill", GRAPH_COLORS[n.kind]);
      shape.addEventListener("click", () => {
        if (state.selected.has(n.id)) state.selected.delete(n.id); else state.selected.add(n.id);
        draw();
      });
      svg.append(shape);
    }
    box.replaceChildren(svg);
    counts.textContent = `${v.nodes.length} of ${v.n_nodes_all} nodes, ${v.n_links} links` +
      (v.links.length < v.n_links ? ` (the ${v.links.length} strongest drawn)` : "");
    selInfo.textContent = state.selected.size ? `${state.selected.size} node(s) selected: ${[...state.selected].join(", ")}`
      : "click nodes to select them";
    list.replaceChildren(...state.groups.map((g, k) => el("li", { "data-group": k },
      el("span", { text: "■ ", style: `color:${GROUP_COLORS[k % GROUP_COLORS.length]}` }),
      `${g.name}: ${g.ids.join(", ")} `,
      el("button", { type: "button", class: "ungroup", text: "ungroup", onclick: () => { state.groups.splice(k, 1); draw(); } }))));
    json.value = JSON.stringify(state.groups.map((g) => [g.name, ...g.ids]));
  };

  const reprune = async () => {
    try {
      state.view = await api(`/api/jobs/${jobId}/graph`, { node_threshold: Number(nodeT.value), edge_threshold: Number(edgeT.value) });
      draw();
    } catch (err) { showError(box, err); }
  };
  nodeT.addEventListener("change", reprune);
  edgeT.addEventListener("change", reprune);
  const group = el("button", { type: "button", class: "group", text: "Group selected into a supernode", onclick: () => {
    if (state.selected.size < 1) return;
    const ids = [...state.selected];
    state.groups = state.groups.map((g) => ({ ...g, ids: g.ids.filter((id) => !state.selected.has(id)) })).filter((g) => g.ids.length);
    state.groups.push({ name: name.value.trim() || `group ${state.groups.length + 1}`, ids });
    state.selected.clear(); name.value = ""; draw();
  } });
  target.append(el("div", { class: "row" }, el("label", {}, "node threshold (influence share)", nodeT),
    el("label", {}, "edge threshold", edgeT), counts),
  el("div", { class: "row" }, name, group, selInfo), box,
  el("h4", { text: "Supernodes" }), list,
  el("label", {}, "supernodes as JSON (circuit-tracer's qParams.supernodes)", json));
  draw();
}
