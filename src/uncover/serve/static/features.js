// uncover workbench: the features view (SAE latents per token; a latent's dashboard and its `sae steer` job).
// Loaded after app.js, whose helpers (el, api, fmt, table, showError, showResult, pollJobs, state) it uses.
// Text from the server is only ever set as textContent.
"use strict";

let featuresView = null;

async function refreshSaes() {
  let files;
  try { files = await api("/api/files"); } catch (err) { return; }
  const sel = document.getElementById("features-sae");
  const dirs = [...new Set(files.map((f) => f.name).filter((n) => n.endsWith("/cfg.json"))
    .map((n) => n.slice(0, -"/cfg.json".length)))];
  const keep = sel.value;
  sel.replaceChildren(sel.options[0], ...dirs.map((d) => el("option", { value: d, text: d })));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

document.getElementById("features-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("features-out");
  const body = { prompt: document.getElementById("features-text").value, path: document.getElementById("features-sae").value,
    k: Number(document.getElementById("features-k").value) };
  out.replaceChildren(el("p", { class: "hint", text: "encoding…" }));
  document.getElementById("latent-detail").replaceChildren();
  try { featuresView = { ...(await api("/api/features", body)), request: body }; }
  catch (err) { showError(out, err); return; }
  renderFeatures(featuresView, out);
});

function latentButton(i, label) {
  return el("button", { class: "latent", "data-latent": i, type: "button", text: label,
    onclick: () => openLatent(i) });
}

function renderFeatures(v, out) {
  // the colour scale leaves out the first position (often an attention sink with outsized activations)
  const vmax = Math.max(1e-9, ...(v.latents.length > 1 ? v.latents.slice(1) : v.latents).flat().map(([, a]) => a));
  const cols = v.tokens.map((t, pos) => el("div", { class: "feature-token", "data-pos": pos },
    el("span", { class: "tok", text: t }),
    ...v.latents[pos].map(([i, a]) => {
      const b = latentButton(i, `${i} ${a.toPrecision(3)}`);
      b.style.background = `rgba(37,99,235,${(0.15 + 0.85 * Math.min(1, a / vmax)).toFixed(3)})`;
      if (a / vmax > 0.5) b.style.color = "#fff";
      return b;
    })));
  out.replaceChildren(el("p", { class: "hint", text: `${v.hook}: ${v.d_sae} latents; each token's strongest active ones (click one)` }),
    el("div", { class: "feature-tokens" }, ...cols),
    el("h4", { text: "Strongest latents in the prompt" }),
    el("div", { class: "row" }, ...v.top.slice(0, 20).map(([i, a, pos]) => latentButton(i, `${i} (${a.toPrecision(3)} @ ${JSON.stringify(v.tokens[pos])})`))));
}

function openLatent(i) {
  // steering or ablating the latent is the registered operation `sae steer`, run as a job; its result view
  // (renderLatent in views.js) shows the generations and next tokens before and after
  const v = featuresView, box = document.getElementById("latent-detail");
  const mode = el("select", { name: "mode" }, el("option", { value: "ablate", text: "ablate (set to 0)" }),
    el("option", { value: "steer", text: "steer (add scale)" }), el("option", { value: "clamp", text: "clamp (hold at scale)" }));
  const scale = el("input", { name: "scale", type: "number", step: "any", value: 10 });
  const n = el("input", { name: "max_new_tokens", type: "number", min: 0, max: 256, value: 12 });
  const effect = el("div", { class: "latent-effect" });
  const dash = el("div", { class: "latent-dashboard" });
  const config = (extra) => (v.request.path ? { ...extra, path: v.request.path } : extra);
  const start = async (op, cfg, target) => {
    try {
      const job = await api("/api/jobs", { op, config: config(cfg) });
      target.replaceChildren(el("p", { class: "hint", text: `job ${job.id} ${job.status}…` }));
      state.shown[job.id] = target; pollJobs();
    } catch (err) { showError(target, err); }
  };
  const apply = el("button", { type: "button", class: "latent-apply", text: "Generate before and after",
    onclick: () => start("sae steer", { prompt: v.request.prompt, latent: i, mode: mode.value, scale: Number(scale.value),
      max_new_tokens: Number(n.value) }, effect) });
  const dashboard = el("button", { type: "button", class: "latent-dash", text: "Dashboard (top contexts)",
    onclick: () => start("sae show", { feature: [i], blocks: 16 }, dash) });
  box.replaceChildren(el("h3", { class: "latent-title", text: `Latent ${i} at ${v.hook}` }),
    el("div", { class: "row" }, dashboard, el("label", {}, "edit", mode), el("label", {}, "scale (steer, clamp)", scale),
      el("label", {}, "tokens", n), apply), effect, dash);
}

document.querySelector("#tabs button[data-tab='features']").addEventListener("click", refreshSaes);
