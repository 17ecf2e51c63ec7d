"""Layer selections as users write them: ``"0,4,8"``, ``"4:20:2"``, a list of ints, or ``None``.

Probing, CCS and reading vectors run at a set of layers. A selection is a list of layer
indices, comma-separated text (``"0,4,8"``) or a Python-style slice of ``range(n_layers)``
(``"4:20:2"``, ``"-6:"``, ``"::3"``), which needs the model's layer count to resolve.
:func:`check_layer_spec` checks the text alone (when a config is built, before the model
loads); :func:`resolve_layers` turns a selection into layer indices of one model.
:class:`DatasetLayers` is the config base of the operations that read a dataset at a layer
selection (``probe``, ``ccs``, ``read``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from uncover.core.config import Config
from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

LayerSpec = Sequence[int] | str | None
"""A layer selection: layer indices, ``"0,4,8"``, ``"start:stop:step"`` or ``None`` (the default)."""

HELP = "give comma-separated layers (0,4,8) or a range start:stop:step (4:20:2)"


def _slice(text: str, what: str) -> slice:
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"{what} {text!r}: a range has at most three parts; {HELP}")
    try:
        nums = [int(x) if x.strip() else None for x in parts]
    except ValueError:
        raise UsageError(f"{what} {text!r}: not integers; {HELP}") from None
    if len(nums) == 3 and nums[2] == 0:
        raise UsageError(f"{what} {text!r}: the step must not be zero; {HELP}")
    return slice(*nums)


def check_layer_spec(spec: LayerSpec, what: str = "layers") -> list[int] | str | None:
    """Check a selection without a model: comma-separated text becomes a list, a range stays text.

    Raises :class:`UsageError` (naming ``what``) for text that is not integers or a range, a
    negative index in a list, a layer given twice or an empty selection.

    >>> check_layer_spec("0, 4,8")
    [0, 4, 8]
    >>> check_layer_spec("4:20:2")
    '4:20:2'
    >>> check_layer_spec("4;8")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: layers '4;8': not integers; give comma-separated layers (0,4,8) or a range \
start:stop:step (4:20:2)
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            _slice(text, what)
            return text
        try:
            layers = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"{what} {spec!r}: not integers; {HELP}") from None
    else:
        layers = list(spec)
    if not layers:
        raise UsageError(f"{what} {spec!r}: no layers; {HELP}")
    neg = [la for la in layers if la < 0]
    if neg:
        raise UsageError(f"{what} {spec!r}: layer(s) {neg} are negative; layers count from 0")
    twice = sorted({la for la in layers if layers.count(la) > 1})
    if twice:
        raise UsageError(f"{what} {spec!r}: layer(s) {twice} given twice")
    return layers


def resolve_layers(spec: LayerSpec, n_layers: int, *, default: LayerSpec = None, what: str = "layers") -> list[int]:
    """The layer indices a selection means on a model with ``n_layers`` layers.

    ``None`` means ``default`` (itself ``None``: every layer). A range is a slice of
    ``range(n_layers)`` (stops past the end are clipped, as in Python); listed layers must
    exist. Raises :class:`UsageError` naming ``what`` and the valid layers.

    >>> resolve_layers("4:20:2", 12)
    [4, 6, 8, 10]
    >>> resolve_layers(None, 4, default="1:")
    [1, 2, 3]
    >>> resolve_layers([0, 30], 30)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: layers [0, 30]: layer(s) [30] out of range; this model has layers 0..29
    """
    if spec is None:
        if default is None:
            return list(range(n_layers))
        spec = default
    checked = check_layer_spec(spec, what)
    if isinstance(checked, str):
        out = list(range(n_layers))[_slice(checked, what)]
        if not out:
            raise UsageError(f"{what} {checked!r}: selects no layer; this model has layers 0..{n_layers - 1}")
        return out
    layers = list(checked or [])
    bad = [la for la in layers if not 0 <= la < n_layers]
    if bad:
        raise UsageError(f"{what} {spec!r}: layer(s) {bad} out of range; this model has layers 0..{n_layers - 1}")
    return layers


class DatasetLayers(Config):
    """Config base: checks a ``data`` field (a dataset name) and a ``layers`` field (a selection).

    Subclasses are frozen dataclasses declaring ``data`` and ``layers``; ``default_layers``
    is what ``layers=None`` means (``None``: every layer). Comma-separated text is turned
    into a list when the config is built; ranges and layer indices are checked against the
    model in :meth:`check_model`.

    >>> from dataclasses import dataclass
    >>> from uncover.core.config import param
    >>> @dataclass(frozen=True)
    ... class Demo(DatasetLayers):
    ...     data: str = param("truth", help="Dataset")
    ...     layers: list[int] | str | None = param(None, help="Layers")
    >>> Demo(layers="0,4").layers
    [0, 4]
    """

    default_layers: str | None = None

    def validate(self) -> None:
        from uncover.data.labelled import check_dataset

        try:
            check_dataset(self.data, what="data (--data)")  # type: ignore[attr-defined]
            object.__setattr__(self, "layers", check_layer_spec(self.layers,  # type: ignore[attr-defined]
                                                                what="layers (--layers)"))
        except UsageError as e:
            raise UsageError(f"{type(self).__name__}: {e}") from None

    def layer_list(self, model: HookedModel) -> list[int]:
        """The selected layers of ``model`` (:attr:`default_layers` when none are given)."""
        try:
            return resolve_layers(self.layers, model.cfg.n_layers,  # type: ignore[attr-defined]
                                  default=self.default_layers, what="layers (--layers)")
        except UsageError as e:
            raise UsageError(f"{type(self).__name__}: {e}") from None

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        self.layer_list(model)
