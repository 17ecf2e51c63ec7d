"""Exact edge patching: run the model with chosen edges of the circuit graph removed.

Removing edge ``u → v`` means that receiver ``v`` reads the residual stream with sender
``u``'s output replaced by its *ablated* value (its output on the corrupt prompt, or its
mean over the clean prompts) while every other reader still sees ``u``'s real output
(Conmy et al. 2023, ACDC; the same "edge ablation" measures faithfulness in Hanna et al.
2024). Each receiver therefore reads its own residual::

    input_v = resid_v + Σ_{u → v removed} (ablated_u − current_u)

where ``current_u`` is ``u``'s output in this (patched) run. Queries, keys and values of
the affected heads are recomputed from their own residuals with the norm and that head's
projection slice (:func:`~uncover.circuits.activations.qkv_from_resid`) and written to
``hook_q``/``hook_k``/``hook_v``; the MLP's normed input is recomputed at
``ln2.hook_normalized``; the logits read ``resid_final + Δ``. Rows where a receiver loses no
edge keep the model's own value bit for bit.

Many edge sets run in one batch (``variants × prompts`` rows). A run may start at a later
block from the clean run's cached residual when no receiver before that block loses an
edge (ACDC's candidates), and senders written before it contribute one shared difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uncover.circuits.activations import capture, head_outputs, qkv_from_resid
from uncover.circuits.graph import Graph
from uncover.core.errors import UncoverError
from uncover.core.names import act_name, resid_name
from uncover.hooks.decode import decode_resid
from uncover.hooks.replay import capture_calls

if TYPE_CHECKING:
    from uncover.circuits.prompts import Prompts
    from uncover.hooks.hooked import HookedModel

ABLATIONS = ("corrupt", "mean")


def _tile(obj: Any, n: int, k: int) -> Any:
    """Repeat every batch-first tensor (``[n, ...]``, at least 2-D) inside ``obj`` ``k`` times."""
    if isinstance(obj, torch.Tensor):
        return obj.repeat(k, *([1] * (obj.dim() - 1))) if obj.dim() >= 2 and obj.shape[0] == n and n > 1 else obj
    if isinstance(obj, tuple):
        return tuple(_tile(o, n, k) for o in obj)
    if isinstance(obj, list):
        return [_tile(o, n, k) for o in obj]
    if isinstance(obj, dict):
        return {key: v.repeat(k, 1, 1) if key == "alibi" else _tile(v, n, k) for key, v in obj.items()}  # Bloom
    return obj


class EdgePatcher:
    """Runs edge-ablated forward passes on fixed prompts.

    >>> patcher = EdgePatcher(model, prompts, ablation="corrupt")  # prompts: 4 IOI pairs
    >>> removed = ~patcher.graph.valid.unsqueeze(0)  # keep every edge
    >>> patcher.run(removed).shape  # [variant, prompt, d_vocab]
    torch.Size([1, 4, 49152])
    """

    def __init__(self, model: HookedModel, prompts: Prompts, ablation: str = "corrupt", *,
                 max_bytes: int = 256 * 2**20):
        if ablation not in ABLATIONS:
            raise UncoverError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
        self.model, self.prompts, self.ablation = model, prompts, ablation
        self.graph = Graph.from_model(model)
        self.max_bytes = max_bytes
        with torch.no_grad():
            clean = capture(model, self.graph, prompts.clean)
            self.clean_logits = prompts.last_logits(clean.logits)
            if ablation == "corrupt":
                corrupt = capture(model, self.graph, prompts.corrupt, senders=True)
                abl = corrupt.senders
                self.corrupt_logits = prompts.last_logits(corrupt.logits)
            else:
                m = prompts.clean.attention_mask.to(clean.senders.dtype)[None, :, :, None]  # [1, batch, pos, 1]
                mean = (clean.senders * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
                abl = mean.expand_as(clean.senders)
                self.corrupt_logits = None
        self.clean_senders = clean.senders  # [U, batch, pos, d_model]
        self.diff0 = abl - clean.senders  # ablated − clean
        self.ablated = abl
        self.resid_pre = clean.resid_pre
        _, self.calls = capture_calls(model, prompts.clean)

    # ---------------------------------------------------------------------------------------
    def run(self, removed: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Last-position logits ``[variant, prompt, d_vocab]`` with ``removed`` ``[variant, U, R]`` edges ablated.

        ``start``: first block to run (earlier blocks are the clean run's); every receiver before it
        must keep all its edges.
        """
        g = self.graph
        removed = removed.to(torch.bool) & g.valid.to(removed.device)
        if start > 0 and removed[:, :, : g.layer_receivers(start).start].any():
            raise UncoverError(f"a run starting at block {start} cannot remove edges into earlier receivers")
        per_row = self.diff0[0].numel() * 4 * (g.n_senders - self._shared(start))
        chunk = max(1, self.max_bytes // max(per_row, 1))
        out = [self._run(removed[i : i + chunk], start) for i in range(0, removed.shape[0], chunk)]
        return torch.cat(out)

    def _shared(self, start: int) -> int:
        """Number of senders written before block ``start`` (their difference is the clean run's)."""
        return 1 + start * (self.graph.n_heads + 1)

    def _run(self, removed: torch.Tensor, start: int) -> torch.Tensor:
        model, g, c = self.model, self.graph, self.model.cfg
        n_var, n = removed.shape[0], self.prompts.n
        u0 = self._shared(start)
        shape = self.diff0.shape[1:]  # [batch, pos, d_model]
        d0 = self.diff0[:u0].reshape(u0, -1)  # [U0, X]
        # later senders' differences, variant-major so that each Δ is one batched matmul
        d1 = torch.zeros(n_var, g.n_senders - u0, d0.shape[1], dtype=d0.dtype, device=d0.device)
        rm = removed.to(d0.dtype)
        abl1 = self.ablated[u0:].reshape(g.n_senders - u0, -1)  # [U1, X]

        def delta(r: slice, upto: int) -> torch.Tensor | None:
            """``[variant, receivers, batch, pos, d_model]`` Δ for receivers ``r`` from senders ``< upto``."""
            if not removed[:, :upto, r].any():
                return None
            out = torch.einsum("vur,ux->vrx", rm[:, :u0, r], d0)
            if upto > u0:
                out = out + torch.bmm(rm[:, u0:upto, r].transpose(1, 2), d1[:, : upto - u0])
            return out.view(n_var, -1, *shape)

        def affected(r: slice) -> torch.Tensor:
            return removed[:, :, r].any(1)  # [variant, receivers]

        def rows(t: torch.Tensor) -> torch.Tensor:  # [variant, batch, ...] -> [variant * batch, ...]
            return t.reshape(n_var * n, *t.shape[2:])

        state: dict[str, Any] = {}

        def on_qkv(layer: int, which: str):
            def fn(v: torch.Tensor, hp: Any) -> torch.Tensor | None:
                sl = g.layer_receivers(layer)
                if which == "q":  # Δ of all the block's attention receivers at once, used by k and v too
                    state["attn"] = delta(slice(sl.start, sl.stop - 1), g.head_sender(layer, 0))
                lo = {"q": 0, "k": c.n_heads, "v": c.n_heads + c.n_kv_heads}[which]
                hi = lo + (c.n_heads if which == "q" else c.n_kv_heads)
                r = slice(sl.start + lo, sl.start + hi)
                dl = state["attn"]
                if dl is None or not removed[:, :, r].any():
                    return None
                dl = dl[:, lo:hi]
                x = state["x"].view(n_var, *shape)  # resid_pre of this block
                xr = (x.unsqueeze(1) + dl).permute(0, 2, 3, 1, 4)  # [variant, batch, pos, receivers, d_model]
                new = rows(qkv_from_resid(model, layer, xr, which)).to(v.dtype)
                keep = rows(affected(r)[:, None, None, :, None].expand(n_var, n, 1, -1, 1))
                return torch.where(keep, new, v)

            return fn

        def on_z(layer: int):
            def fn(v: torch.Tensor, hp: Any) -> None:
                h0 = g.head_sender(layer, 0) - u0
                cur = head_outputs(model, layer, v).reshape(c.n_heads, n_var, -1).transpose(0, 1)
                d1[:, h0 : h0 + c.n_heads] = abl1[h0 : h0 + c.n_heads] - cur

            return fn

        def on_mid(layer: int):
            def fn(v: torch.Tensor, hp: Any) -> None:
                state["mid"] = v

            return fn

        def on_ln2(layer: int):
            def fn(v: torch.Tensor, hp: Any) -> torch.Tensor | None:
                sl = g.layer_receivers(layer)
                r = slice(sl.stop - 1, sl.stop)
                upto = g.head_sender(layer, 0) if c.parallel_attn_mlp else g.mlp_sender(layer)
                dl = delta(r, upto)
                if dl is None:
                    return None
                x = state["x"] if c.parallel_attn_mlp else state["mid"]
                new = model.norm(layer, "ln2").forward(x + rows(dl[:, 0])).to(v.dtype)
                keep = rows(affected(r)[:, None, None, :].expand(n_var, n, 1, 1))
                return torch.where(keep, new, v)

            return fn

        def on_mlp(layer: int):
            def fn(v: torch.Tensor, hp: Any) -> None:
                i = g.mlp_sender(layer) - u0
                d1[:, i] = abl1[i] - v.reshape(n_var, -1)

            return fn

        hooks: list[tuple[str, Any]] = []
        for layer in range(start, c.n_layers):
            hooks += [(act_name(w, layer), on_qkv(layer, w)) for w in ("q", "k", "v")]
            hooks += [(act_name("z", layer), on_z(layer)), (resid_name(layer, "ln2.hook_normalized"), on_ln2(layer)),
                      (act_name("mlp_out", layer), on_mlp(layer))]
            if not c.parallel_attn_mlp:
                hooks.append((act_name("resid_mid", layer), on_mid(layer)))
        x = self.resid_pre[start].repeat(n_var, 1, 1)
        calls_args = [_tile(a, n, n_var) for a in self.calls.args]
        calls_kwargs = [_tile(k, n, n_var) for k in self.calls.kwargs]
        with torch.no_grad(), model.hooks(hooks):
            st = model.state
            st.batch, st.q_len, st.offset, st.attention_mask = x.shape[0], x.shape[1], 0, None
            for layer in range(start, c.n_layers):
                state["x"] = x
                o = model.adapter.block(layer)(x, *calls_args[layer], **calls_kwargs[layer])
                x = o[0] if isinstance(o, tuple) else o
            dl = delta(slice(g.n_receivers - 1, g.n_receivers), g.n_senders)
            if dl is not None:
                keep = rows(affected(slice(g.n_receivers - 1, g.n_receivers))[:, None, None, :].expand(n_var, n, 1, 1))
                x = torch.where(keep, x + rows(dl[:, 0]), x)
            last = x[torch.arange(x.shape[0], device=x.device), self.prompts.last.repeat(n_var)]
            return decode_resid(model, last).view(n_var, n, -1)
