"""The attribution graph as a plotly node-link figure, and the page controls that group nodes into supernodes.

Nodes sit at (token position, layer): embeddings below layer 0, logits above the last layer,
features of one (layer, position) spread side by side; marker size grows with influence.
Edges are blue when excitatory and red when inhibitory, wider when stronger. In the HTML
report, lasso or box-select nodes, name the selection and press "Group": the group takes a
colour, is listed, and the supernodes are kept as JSON in circuit-tracer's
``[[name, node_id, ...], ...]`` form (copy it into ``qParams.supernodes``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.graphs.graph import AttributionGraph

SYMBOLS = {"feature": "circle", "error": "square", "embedding": "diamond", "logit": "star"}
COLORS = {"feature": "#6b7280", "error": "#d4a017", "embedding": "#10b981", "logit": "#8b5cf6"}


def graph_figure(g: AttributionGraph, max_edges: int = 400) -> go.Figure:
    """A node-link view of ``g``'s pruned graph (the ``max_edges`` strongest edges drawn)."""
    import plotly.graph_objects as go

    kept = g.nodes()
    info = {i: g.node(i) for i in kept}
    slots: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in kept:
        slots[(info[i]["layer"], info[i]["pos"])].append(i)
    xy = {}
    for (layer, pos), members in slots.items():
        for r, i in enumerate(members):
            xy[i] = (pos + 0.8 * ((r + 1) / (len(members) + 1) - 0.5), layer)
    fig = go.Figure()
    edges = g.edges()[:max_edges]
    top = max((abs(w) for _, _, w in edges), default=1.0) or 1.0
    for sign, color, name in ((1, "rgba(37,99,235,0.45)", "excitatory"), (-1, "rgba(220,38,38,0.45)", "inhibitory")):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for s, t, w in edges:
            if (w > 0) == (sign > 0) and abs(w) > 0.02 * top:
                xs += [xy[s][0], xy[t][0], None]
                ys += [xy[s][1], xy[t][1], None]
        fig.add_scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": 1.2}, name=f"{name} edges",
                        hoverinfo="skip")
    infl = g.influence.clamp(min=0)
    scale = float(infl[kept].max()) if kept else 1.0
    fig.add_scatter(
        x=[xy[i][0] for i in kept], y=[xy[i][1] for i in kept], mode="markers", name="nodes",
        customdata=[info[i]["node_id"] for i in kept],
        text=[f"{info[i]['label']}<br>activation {info[i]['activation']:.3g}<br>influence {float(infl[i]):.3g}"
              for i in kept],
        hovertemplate="%{text}<extra></extra>",
        marker={"size": [7 + 18 * (float(infl[i]) / (scale or 1)) ** 0.5 for i in kept],
                "color": [COLORS[info[i]["kind"]] for i in kept],
                "symbol": [SYMBOLS[info[i]["kind"]] for i in kept], "line": {"width": 0.5, "color": "#111"}})
    fig.update_layout(
        title=g.title, dragmode="lasso", height=max(450, 28 * (g.n_layers + 2)), hovermode="closest",
        xaxis={"tickmode": "array", "tickvals": list(range(g.n_pos)), "ticktext": g.tokens, "title": "token"},
        yaxis={"title": "layer (embeddings -1, logits on top)", "range": [-1.7, g.n_layers + 0.7]})
    return fig


def supernode_controls() -> str:
    """HTML and script that group lasso-selected nodes of the ``uc-graph`` figure into named supernodes."""
    return """
<div style="margin:.5rem 0">
 <input id="uc-name" placeholder="supernode name" style="padding:.2rem">
 <button id="uc-group">Group selected nodes</button> <button id="uc-clear">Clear groups</button>
 <span id="uc-sel" class="meta">lasso or box-select nodes in the graph</span>
 <ul id="uc-list"></ul>
 <details><summary>Supernodes as JSON (circuit-tracer's qParams.supernodes)</summary>
 <textarea id="uc-json" rows="4" style="width:100%">[]</textarea></details>
</div>
<script>
(function(){
  const gd = document.getElementById('uc-graph');
  if (!gd || !gd.data) return;
  const ti = gd.data.findIndex(t => t.name === 'nodes');
  const base = gd.data[ti].marker.color.slice();
  const ids = gd.data[ti].customdata;
  const palette = ['#e11d48','#2563eb','#16a34a','#f59e0b','#7c3aed','#0891b2','#db2777','#65a30d'];
  let sel = []; const groups = [];
  gd.on('plotly_selected', ev => {
    sel = ev ? ev.points.filter(p => p.curveNumber === ti).map(p => ids[p.pointIndex]) : [];
    document.getElementById('uc-sel').textContent = sel.length + ' node(s) selected';
  });
  function render(){
    const colors = base.slice();
    groups.forEach((g, k) => g.slice(1).forEach(id => {
      const j = ids.indexOf(id);
      if (j >= 0) colors[j] = palette[k % palette.length];
    }));
    Plotly.restyle(gd, {'marker.color': [colors]}, [ti]);
    document.getElementById('uc-json').value = JSON.stringify(groups);
    document.getElementById('uc-list').innerHTML = groups.map((g, k) =>
      '<li><span style="color:' + palette[k % palette.length] + '">&#9632;</span> ' +
      g[0].replace(/</g, '&lt;') + ': ' + g.slice(1).join(', ') + '</li>').join('');
  }
  document.getElementById('uc-group').onclick = () => {
    if (!sel.length) return;
    const name = document.getElementById('uc-name').value.trim() || ('group ' + (groups.length + 1));
    groups.push([name, ...sel]); render();
  };
  document.getElementById('uc-clear').onclick = () => { groups.length = 0; render(); };
})();
</script>
"""
