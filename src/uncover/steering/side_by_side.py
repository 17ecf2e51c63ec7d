"""Steered and unsteered continuations of the same prompts, side by side.

Owns :class:`SteerResult` (what ``uncover steer`` shows) and :func:`side_by_side`, which
generates greedily from each prompt twice, without and with a :class:`Steering`; the model
is restored after the steered run (see :func:`uncover.steering.methods.steering`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from uncover.core.results import Result
from uncover.steering.methods import Steering, generate


@dataclass
class SteerResult(Result):
    """Continuations of each prompt with and without steering.

    Attributes:
        method: how the model was steered (``actadd``, ``caa``, ``ablate`` or ``vector <file>``).
        layers: the layers steered at.
        prompts: the prompts, in order.
        plain: the unsteered continuation of each prompt.
        steered: the steered continuation of each prompt.

    >>> r = SteerResult("actadd", [6], ["I think"], [" it is"], [" it was lovely"])
    >>> r.to_frame().columns.tolist()
    ['prompt', 'unsteered', 'steered']
    """

    method: str
    layers: list[int]
    prompts: list[str]
    plain: list[str]
    steered: list[str]

    @property
    def title(self) -> str:
        return f"steering with {self.method} at layer(s) {self.layers}"

    def summary(self) -> str:
        lines = [self.title]
        for p, a, b in zip(self.prompts, self.plain, self.steered):
            lines += [f"prompt:    {p!r}", f"  plain:   {a!r}", f"  steered: {b!r}"]
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "unsteered": self.plain, "steered": self.steered})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Table(header={"values": ["prompt", "unsteered", "steered"]},
                                 cells={"values": [self.prompts, self.plain, self.steered], "align": "left"}))
        fig.update_layout(title=self.title)
        return fig


def side_by_side(model: Any, prompts: Sequence[str], steer: Steering, *, method: str, layers: Sequence[int],
                 max_new_tokens: int = 20) -> SteerResult:
    """Greedy continuations of ``prompts`` without and with ``steer``.

    >>> from uncover.steering.methods import actadd
    >>> st = actadd(model, "Love", "Hate", layer=6, coeff=5)
    >>> r = side_by_side(model, ["I hate you because"], st, method="actadd", layers=[6], max_new_tokens=4)
    >>> len(r.steered)
    1
    """
    prompts = list(prompts)
    plain = generate(model, prompts, None, max_new_tokens)
    steered = generate(model, prompts, steer, max_new_tokens)
    return SteerResult(method, [int(la) for la in layers], prompts, plain, steered)
