"""The hook-name vocabulary (TransformerLens names) and its parser.

Names: ``hook_embed``, ``hook_pos_embed``, ``blocks.{l}.hook_resid_pre|hook_resid_mid|
hook_resid_post|hook_attn_out|hook_mlp_out``, ``blocks.{l}.ln1.hook_normalized``,
``blocks.{l}.ln2.hook_normalized``, ``blocks.{l}.attn.hook_q|hook_k|hook_v|hook_z|
hook_pattern|hook_attn_scores|hook_result``, ``blocks.{l}.mlp.hook_pre|hook_pre_linear|
hook_post``, ``ln_final.hook_normalized``, ``logits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESID_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
LN_POINTS = ("ln1.hook_normalized", "ln2.hook_normalized")
ATTN_POINTS = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result")
MLP_POINTS = ("hook_pre", "hook_pre_linear", "hook_post")
GLOBAL_POINTS = ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "logits")
PER_HEAD = frozenset({"hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern", "hook_attn_scores", "hook_result"})

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class HookName:
    """A parsed hook name.

    ``layer`` is ``None`` for global points; ``point`` is the part after ``blocks.{l}.``
    (for example ``attn.hook_z``) or the whole name for global points.

    >>> HookName.parse("blocks.3.attn.hook_z")
    HookName(layer=3, point='attn.hook_z')
    """

    layer: int | None
    point: str

    @staticmethod
    def parse(name: str) -> HookName:
        """Split ``name`` into layer and point; does not check that it exists."""
        if not isinstance(name, str):
            from uncover.core.errors import UnknownHookName

            raise UnknownHookName(f"a hook name is a string such as 'blocks.0.hook_resid_post', got "
                                  f"{type(name).__name__} {name!r}")
        m = _BLOCK.match(name)
        if m:
            return HookName(int(m.group(1)), m.group(2))
        return HookName(None, name)

    @property
    def leaf(self) -> str:
        """The last component, e.g. ``hook_z`` for ``blocks.0.attn.hook_z``."""
        return self.point.rsplit(".", 1)[-1]

    @property
    def per_head(self) -> bool:
        """Whether the value has a head axis."""
        return self.point.startswith("attn.") and self.leaf in PER_HEAD

    def __str__(self) -> str:
        return self.point if self.layer is None else f"blocks.{self.layer}.{self.point}"


def block_points() -> list[str]:
    """All point names inside a block, in forward order."""
    pts = ["hook_resid_pre", "ln1.hook_normalized"]
    pts += [f"attn.{p}" for p in ATTN_POINTS]
    pts += ["hook_attn_out", "hook_resid_mid", "ln2.hook_normalized"]
    pts += [f"mlp.{p}" for p in MLP_POINTS]
    pts += ["hook_mlp_out", "hook_resid_post"]
    return pts


def resid_name(layer: int, point: str = "hook_resid_pre") -> str:
    """``blocks.{layer}.{point}``.

    >>> resid_name(2, "hook_mlp_out")
    'blocks.2.hook_mlp_out'
    """
    return f"blocks.{layer}.{point}"


def act_name(kind: str, layer: int | None = None) -> str:
    """TransformerLens-style shorthand: ``act_name("z", 3) == "blocks.3.attn.hook_z"``.

    >>> act_name("resid_post", 1), act_name("pattern", 0), act_name("embed")
    ('blocks.1.hook_resid_post', 'blocks.0.attn.hook_pattern', 'hook_embed')
    """
    short = {
        "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
        "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores", "result": "attn.hook_result",
        "pre": "mlp.hook_pre", "pre_linear": "mlp.hook_pre_linear", "post": "mlp.hook_post",
        "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    }
    if layer is None:
        return {"embed": "hook_embed", "pos_embed": "hook_pos_embed", "ln_final": "ln_final.hook_normalized"}.get(
            kind, kind
        )
    return f"blocks.{layer}.{short.get(kind, kind)}"


# ---- component labels: one style in every table and figure ---------------------------------------------
def layer_label(layer: int) -> str:
    """``L{layer}``: a layer as a row of a layer × position grid (the residual stream entering it).

    >>> f"{layer_label(3)}@5"
    'L3@5'
    """
    return f"L{layer}"


def head_label(layer: int, head: int) -> str:
    """``L{layer}H{head}``.

    >>> head_label(23, 3)
    'L23H3'
    """
    return f"L{layer}H{head}"


def mlp_label(layer: int) -> str:
    """``MLP{layer}``.

    >>> mlp_label(4)
    'MLP4'
    """
    return f"MLP{layer}"


def neuron_label(layer: int, neuron: int) -> str:
    """``L{layer}N{neuron}``.

    >>> neuron_label(10, 2047)
    'L10N2047'
    """
    return f"L{layer}N{neuron}"


def kv_head_label(layer: int, group: int) -> str:
    """``L{layer}KV{group}``: a key/value head, shared by the query heads of its group (grouped-query attention).

    >>> kv_head_label(5, 1)
    'L5KV1'
    """
    return f"L{layer}KV{group}"


def input_label(unit: str, which: str) -> str:
    """``{unit}.{which}``: one input of a head as a receiver (``q``, ``k`` or ``v``).

    >>> input_label(head_label(9, 6), "q"), input_label(kv_head_label(3, 0), "v")
    ('L9H6.q', 'L3KV0.v')
    """
    return f"{unit}.{which}"


def attn_bias_label(layer: int) -> str:
    """``L{layer} attn bias``: the attention output bias, a component of its own in attributions.

    >>> attn_bias_label(0)
    'L0 attn bias'
    """
    return f"L{layer} attn bias"
