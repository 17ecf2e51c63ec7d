"""SAE evaluation: reconstruction, sparsity, dead/dense latents and CE loss recovered.

The standard metrics (Bricken et al. 2023; Gao et al. 2024; SAELens's evals): MSE and the
fraction of variance explained ``1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2``, L0 (mean
active latents per token), dead latents (never active on the evaluation tokens) and dense
ones (active on more than 10% of tokens), and the next-token cross-entropy with the
reconstruction spliced into the model at the hook, reported as
``CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)`` where ``CE_zero`` zero-ablates
the hook. The first ``skip_first`` positions are left unchanged and not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from uncover.core.results import Result
from uncover.hooks.interventions import Zero
from uncover.sae.attach import attach_sae

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE


@dataclass
class SAEEval(Result):
    """Evaluation of an SAE on held-out tokens.

    Attributes:
        hook: the SAE's hook. tokens: tokens scored.
        mse: mean squared error per token (summed over ``d_in``). fve: fraction of variance explained.
        l0: mean active latents per token. dead, dense: fractions of latents never active / active > 10%.
        ce_clean, ce_sae, ce_zero: next-token cross-entropy (nats) clean, with the reconstruction, zero-ablated.
        ce_recovered: ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``.
        density: ``[d_sae]`` firing frequency of each latent.
    """

    hook: str
    tokens: int
    mse: float
    fve: float
    l0: float
    dead: float
    dense: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    density: torch.Tensor

    @property
    def title(self) -> str:
        return f"SAE evaluation at {self.hook}"

    def summary(self) -> str:
        return (f"{self.title} on {self.tokens} tokens: FVE {self.fve:.3f}, L0 {self.l0:.1f}, MSE {self.mse:.4g}, "
                f"dead {self.dead:.1%}, dense {self.dense:.1%}; CE clean {self.ce_clean:.3f}, with SAE "
                f"{self.ce_sae:.3f}, zero-ablated {self.ce_zero:.3f} -> CE recovered {self.ce_recovered:.3f}")

    def metrics(self) -> dict[str, float]:
        """The scalar metrics as a dict."""
        return {k: getattr(self, k) for k in ("tokens", "mse", "fve", "l0", "dead", "dense", "ce_clean", "ce_sae",
                                              "ce_zero", "ce_recovered")}

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{"metric": k, "value": float(v)} for k, v in self.metrics().items()])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        d = self.density.clamp(min=1e-7).log10()
        fig = go.Figure(go.Histogram(x=d.tolist(), nbinsx=60))
        fig.update_layout(title=f"Latent density (log10 firing frequency; {self.dead:.1%} dead at 1e-7)",
                          xaxis_title="log10 density", yaxis_title="latents")
        return fig


def _ce(logits: torch.Tensor, tokens: torch.Tensor, skip_first: int) -> tuple[float, int]:
    lg = logits[:, skip_first:-1].float()
    tgt = tokens[:, skip_first + 1 :]
    loss = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="sum")
    return float(loss), tgt.numel()


@torch.no_grad()
def evaluate_sae(model: HookedModel, sae: SAE, tokens: torch.Tensor, batch_size: int = 8,
                 skip_first: int = 1) -> SAEEval:
    """Evaluate ``sae`` on token blocks ``[n, pos]`` (use held-out text: ``token_blocks(..., split="heldout")``).

    >>> from uncover.data.corpus import token_blocks
    >>> ev = evaluate_sae(model, sae, token_blocks(model, block_len=32, split="heldout")[:2])
    >>> ev.fve <= 1  # an untrained SAE explains little (or less than nothing)
    True
    """
    hook = sae.cfg.hook_name
    model.site(hook)
    d = sae.cfg.d_in
    sse = 0.0
    n = 0
    sx = torch.zeros(d, dtype=torch.float64)
    sxx = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_ce = 0

    for i in range(0, len(tokens), batch_size):
        tok = tokens[i : i + batch_size].to(model.device)
        c, m = _ce(model(tok), tok, skip_first)
        ce["clean"] += c
        with attach_sae(model, sae, use_error_term=False, skip_first=skip_first) as att:
            c, _ = _ce(model(tok), tok, skip_first)
        ce["sae"] += c
        zero = [Zero(hook, positions=range(skip_first, tok.shape[1]))] if skip_first < tok.shape[1] else []
        with model.intervene(zero):
            c, _ = _ce(model(tok), tok, skip_first)
        ce["zero"] += c
        n_ce += m
        x = att["hook_sae_input"].reshape(-1, d).double()
        f = att["hook_sae_acts_post"].reshape(-1, sae.cfg.d_sae)
        sse += float((att["hook_sae_recons"].reshape(-1, d).double() - x).pow(2).sum())
        sx += x.sum(0)
        sxx += float(x.pow(2).sum())
        active = f > 0
        l0 += float(active.sum())
        fired += active.sum(0).double()
        n += len(x)
    var = sxx - float(sx.pow(2).sum()) / n
    density = (fired / n).float()
    cc, cs, cz = (ce[k] / n_ce for k in ("clean", "sae", "zero"))
    recovered = (cz - cs) / (cz - cc) if cz != cc else float("nan")
    return SAEEval(hook, n, sse / n, 1 - sse / var, l0 / n, float((density == 0).float().mean()),
                   float((density > 0.1).float().mean()), cc, cs, cz, recovered, density)
