"""Issue 13, probed again: an exception or Ctrl-C anywhere inside an operation that changes the model leaves the
model exactly as before (or fully changed with the change object returned), never in between.

Every case runs an operation on a tiny random model and injects ``RuntimeError`` and ``KeyboardInterrupt`` at the
first, a middle and the last call of a function inside its loops (counted on a clean run first), and, for
functions that write weights, just *after* the call (the weights are in, the change object is not yet returned).
"As before" is the whole state (:func:`full_state`): every parameter's and buffer's bytes, ``requires_grad``,
each module's ``training`` flag, every hook dictionary of every module (and PyTorch's global hooks), the
attention implementation of every config and the attributes the hook engine adds to modules. The model starts
in a deliberately mixed state (embeddings frozen, the final norm in training mode) so a blanket
``requires_grad_(True)`` or ``.eval()`` shows.
"""

from __future__ import annotations

import hashlib
import importlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import tiny, tokens
from tests.unit.test_editing import CFG, word_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

class SIGINT(KeyboardInterrupt):
    """Stands for a real SIGINT (``signal.raise_signal``) in :class:`Injector`."""


EXCEPTIONS = [RuntimeError, KeyboardInterrupt]
FACT = {"prompt": "{} is in the city of", "subject": "big ben", "target": " rome"}
CALIB = tokens(2, 12, seed=3)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _bytes(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() + str((t.shape, t.dtype)).encode()).hexdigest()


def full_state(m: Any) -> dict[str, Any]:
    """Everything an operation could leave changed in ``m`` (a HookedModel), comparable with ``==``."""
    from torch.nn.modules import module as mm

    from uncover.hooks import attention

    root: nn.Module = m.model
    out: dict[str, Any] = {}
    for k, p in root.named_parameters():
        out[f"param {k}"] = (_bytes(p), p.requires_grad, p.grad is None)
    for k, b in root.named_buffers():
        out[f"buffer {k}"] = _bytes(b)
    for k, mod in root.named_modules():
        out[f"module {k}"] = (mod.training, tuple(len(getattr(mod, d, {})) for d in _HOOK_DICTS),
                              hasattr(mod, "_uncover_attn_entries"), hasattr(mod, attention.ATTR))
    configs = {id(c): c for c in [root.config, *(getattr(mod, "config", None) for mod in root.modules())]
               if c is not None}
    out["attn impl"] = sorted(str(c._attn_implementation_internal) for c in configs.values())
    out["global hooks"] = tuple(len(getattr(mm, n)) for n in dir(mm) if n.startswith("_global_") and
                                isinstance(getattr(mm, n), dict))
    out["grad mode"] = torch.is_grad_enabled()
    return out


def mixed(m: Any) -> Any:
    """``m`` in a non-default state: embeddings frozen, the final norm in training mode (it has no dropout)."""
    m.model.get_input_embeddings().weight.requires_grad_(False)
    m.adapter.final_norm().train()
    return m


def changed_keys(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[:5]


# ---- injection points ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """Where to inject: ``owner.attr`` (``owner``: a module path, optionally ``:Class``), before or after the call.

    ``attr == "<block1>"``: a forward pre-hook on block 1 (every forward through the model, its calibration
    passes included).
    """

    owner: str
    attr: str
    after: bool = False

    def resolve(self) -> Any:
        mod, _, cls = self.owner.partition(":")
        obj = importlib.import_module(mod)
        return getattr(obj, cls) if cls else obj

    def __str__(self) -> str:
        return f"{self.owner.rsplit('.', 1)[-1]}.{self.attr}{'+after' if self.after else ''}"


BLOCK = Point("", "<block1>")


class Injector:
    """Counts calls at a point, or raises ``exc`` at its ``n``-th call."""

    def __init__(self, point: Point, n: int | None = None, exc: type[BaseException] = RuntimeError):
        self.point, self.n, self.exc, self.calls = point, n, exc, 0

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.n:
            if self.exc is SIGINT:  # a real Ctrl-C: Python's handler raises KeyboardInterrupt where it lands
                signal.raise_signal(signal.SIGINT)
                return
            raise self.exc(f"injected at call {self.n} of {self.point}")

    def install(self, m: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
        if self.point.attr == "<block1>":
            h = m.adapter.block(1).register_forward_pre_hook(lambda mod, args: self._tick())
            return h.remove
        owner = self.point.resolve()
        real = getattr(owner, self.point.attr)
        is_class = isinstance(real, type)
        after = self.point.after

        def wrapper(*a: Any, **k: Any) -> Any:
            if not after:
                self._tick()
            out = real(*a, **k)
            if after:
                self._tick()
            return out

        if isinstance(owner, type) and not is_class and isinstance(owner.__dict__.get(self.point.attr),
                                                                   staticmethod):
            wrapper = staticmethod(wrapper)  # type: ignore[assignment]
        monkeypatch.setattr(owner, self.point.attr, wrapper)
        return lambda: monkeypatch.setattr(owner, self.point.attr, real)


# ---- the operations ----------------------------------------------------------------------------------
def _undo(result: Any) -> None:
    if hasattr(result, "revert"):
        result.revert()


@dataclass(frozen=True)
class Case:
    name: str
    model: Callable[[], Any]
    run: Callable[[Any, Any], Any]
    points: tuple[Point, ...]
    changes: bool = True
    """Whether a finished run changes the weights (and its result reverts them)."""


PR = "uncover.pruning"
ED = "uncover.editing"
SITE_WRITE = Point(f"{PR}.base:LinearSite", "write", after=True)
EXPERT_WRITE = Point(f"{PR}.experts:ExpertSite", "write", after=True)
W_WRITE = Point("uncover.hooks.weights", "_write", after=True)
EDIT_APPLIED = Point(f"{ED}.base:Edit", "apply", after=True)


def _moe() -> Any:
    from tests.families.kinds import family_model

    return family_model("mixtral")


def _prune(method: str, **kw: Any) -> Callable[[Any, Any], Any]:
    def run(m: Any, tmp: Any) -> Any:
        from uncover.pruning import prune

        return prune(m, method, 0.5, **({} if method == "magnitude" else {"tokens": CALIB}), **kw)

    return run


def _structured(unit: str, given: bool) -> Callable[[Any, Any], Any]:
    def run(m: Any, tmp: Any) -> Any:
        from uncover.pruning.structured import prune_structured

        shape = (m.cfg.n_layers, m.cfg.n_heads if unit == "heads" else m.cfg.d_mlp)
        scores = torch.rand(shape, generator=torch.Generator().manual_seed(0)) if given else None
        return prune_structured(m, unit, 0.5, scores=scores, tokens=None if given else CALIB)

    return run


def _rome(m: Any, tmp: Any) -> Any:
    from uncover.editing import rome

    return rome(m, **FACT, layer=1, mom2_samples=256, cache=tmp, config=CFG, progress=False)


def _memit(m: Any, tmp: Any) -> Any:
    from uncover.editing import memit

    reqs = [tuple(FACT.values()), ("{} is in the city of", "the colosseum", " london")]
    return memit(m, reqs, layers=[0, 1], mom2_samples=256, cache=tmp, config=CFG, progress=False)


def _kn(m: Any, tmp: Any) -> Any:
    from uncover.editing import kn_edit

    return kn_edit(m, **FACT, steps=8, threshold=0.1, layers=[0, 1, 2], max_neurons=3, margin=0.5, contrast=None)


def _edit_reload(m: Any, tmp: Any) -> Any:
    """Edit.load of a saved edit (made on a twin model): all of it is written by the reload."""
    from uncover.editing import Edit
    from uncover.editing.base import down_proj_path

    path = tmp / "edit"
    if not path.exists():
        twin = word_model()
        g = torch.Generator().manual_seed(1)
        deltas = {down_proj_path(twin, x): torch.randn(twin.model.get_parameter(down_proj_path(twin, x)).shape,
                                                       generator=g) for x in (0, 2)}
        Edit("rome", [], [0, 2], deltas, model=twin).save(path)
    return Edit.load(path, m)


def _edit_applied_block(m: Any, tmp: Any) -> Any:
    """``with edit.applied():`` an edit switched on for a forward, then off again."""
    from uncover.editing import Edit
    from uncover.editing.base import down_proj_path

    key = down_proj_path(m, 1)
    e = Edit("rome", [], [1], {key: torch.full(m.model.get_parameter(key).shape, 0.5)}, model=m)
    with torch.no_grad(), e.applied() as edited:
        return edited(CALIB)


def _pruning_reload(m: Any, tmp: Any) -> Any:
    from uncover.pruning import Pruning, magnitude_prune

    path = tmp / "p.safetensors"
    if not path.exists():
        twin = tiny("llama")
        magnitude_prune(twin, 0.5).save(path)
    return Pruning.load(path, m)


def _op(name: str, **fields: Any) -> Callable[[Any, Any], Any]:
    def run(m: Any, tmp: Any) -> Any:
        from uncover.ops import run as run_op

        return run_op(name, m, **fields)

    return run


def _edit_sweep(m: Any, tmp: Any) -> Any:
    from uncover.data.counterfact import Counterfact
    from uncover.editing import rome
    from uncover.editing.evaluate import evaluate_edits

    facts = [Counterfact("big ben", "{} is in the city of", " london", " rome", ("big ben is in",), ("a movie",)),
             Counterfact("the colosseum", "{} is in the city of", " rome", " paris", (), ("the tower is in",))]

    def edit_fn(model: Any, f: Any) -> Any:
        return rome(model, f.prompt, f.subject, f.new, layer=1, mom2_samples=256, cache=tmp, config=CFG,
                    progress=False)

    return evaluate_edits(m, edit_fn, facts, gen_tokens=0, progress=False)


def _steer(kind: str) -> Callable[[Any, Any], Any]:
    def run(m: Any, tmp: Any) -> Any:
        from uncover.steering import CAA, DirectionalAblation, SteeringVector, generate

        d = torch.ones(m.cfg.d_model)
        steer = {"caa": CAA(SteeringVector({1: d}), multiplier=2.0),
                 "ablate": DirectionalAblation(d), "ablate-half": DirectionalAblation(d, 0.5)}[kind]
        return generate(m, ["the tower is in", "big ben"], steer, max_new_tokens=3)

    return run


def _sae_steer(m: Any, tmp: Any) -> Any:
    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig
    from uncover.sae.steer_latent import steer_latent

    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=m.cfg.d_model, d_sae=48, architecture="topk", k=4,
                            hook_name="blocks.1.hook_resid_post"))
    return steer_latent(m, sae, "the tower is in the city of", 3, "clamp", 5.0, max_new_tokens=3, k=3)


def _diff_change(m: Any, tmp: Any) -> Any:
    """A saved weight change applied to the base for a block (diffing's Change.applied), then taken off."""
    from uncover.diffing import resolve_change
    from uncover.hooks import weights

    path = tmp / "w.safetensors"
    if not path.exists():
        ps = weights.parameters(m)
        keys = [k for k in ps if k.endswith("down_proj.weight")]
        weights.save_change(path, {k: torch.full(ps[k].shape, 0.25) for k in keys}, "add")
    ch = resolve_change(m, path)
    with torch.no_grad(), ch.applied(m) as changed:
        return changed(CALIB)


def _knowledge_neurons(m: Any, tmp: Any) -> Any:
    from uncover.neurons import knowledge_neurons

    return knowledge_neurons(m, ["the tower is in the city of", "big ben is in"], " rome", layers=[0, 1, 2],
                             steps=3, layers_per_pass=1)


def _ablate_neurons(m: Any, tmp: Any) -> Any:
    from uncover.neurons import ablate_neurons

    return ablate_neurons(m, CALIB, [(0, 1), (1, 2), (2, 3)], lambda logits: logits[:, 5].mean())


CASES = [
    Case("magnitude", lambda: tiny("gpt2"), _prune("magnitude"),
         (Point(f"{PR}.magnitude", "magnitude_weight"), SITE_WRITE, Point(f"{PR}.calibrate", "measured_rows"),
          Point(f"{PR}.calibrate", "Pruning"))),
    Case("magnitude 2:4", lambda: tiny("llama-gqa"), _prune("magnitude", pattern="2:4"),
         (SITE_WRITE, Point(f"{PR}.magnitude", "row_mask"))),
    Case("wanda", lambda: tiny("llama"), _prune("wanda"),
         (BLOCK, Point(f"{PR}.calibrate:InputStats", "add"), Point(f"{PR}.wanda", "wanda_weight"), SITE_WRITE,
          Point(f"{PR}.calibrate", "Pruning"))),
    Case("sparsegpt", lambda: tiny("gpt_neox"), _prune("sparsegpt"),
         (BLOCK, Point(f"{PR}.sparsegpt", "inverse_hessian_factor"), SITE_WRITE)),
    Case("wanda moe", _moe, _prune("wanda"),
         (Point(f"{PR}.calibrate", "calibration_hook"), EXPERT_WRITE, SITE_WRITE)),
    Case("heads attribution", lambda: tiny("llama-gqa"), _structured("heads", given=False),
         (BLOCK, Point(f"{PR}.structured", "_rows"), Point(f"{PR}.structured", "measured_rows"),
          Point(f"{PR}.structured", "Pruning"))),
    Case("neurons given", lambda: tiny("gpt2"), _structured("neurons", given=True),
         (Point(f"{PR}.structured", "_rows"), Point(f"{PR}.structured", "Pruning"))),
    Case("rome", word_model, _rome,
         (BLOCK, Point(f"{ED}.rome", "optimise_delta"), W_WRITE, EDIT_APPLIED)),
    Case("memit", word_model, _memit,
         (BLOCK, Point(f"{ED}.memit", "memit_update"), W_WRITE, EDIT_APPLIED)),
    Case("kn edit", word_model, _kn, (BLOCK, Point(f"{ED}.kn", "_gap"), W_WRITE, EDIT_APPLIED)),
    Case("edit reload", word_model, _edit_reload, (W_WRITE, EDIT_APPLIED)),
    Case("edit applied block", lambda: tiny("llama"), _edit_applied_block, (EDIT_APPLIED, W_WRITE, BLOCK),
         changes=False),
    Case("pruning reload", lambda: tiny("llama"), _pruning_reload,
         (W_WRITE, Point(f"{PR}.base:Pruning", "reapply", after=True))),
    Case("edit op", word_model,
         _op("edit", **FACT, layer=1, mom2_samples=256, gen_tokens=2, check=["the colosseum is in the city of"]),
         (Point(f"{ED}.ops", "prediction_rows"), EDIT_APPLIED, Point("uncover.ops.provenance", "record"),
          Point(f"{ED}.ops", "EditReport"))),
    Case("prune op", lambda: tiny("llama"), _op("prune", method="magnitude", sparsity=0.5, eval_blocks=0),
         (SITE_WRITE, Point("uncover.ops.provenance", "record"), Point(f"{PR}.ops", "PruneReport"))),
    Case("edit sweep", word_model, _edit_sweep,
         (Point(f"{ED}.evaluate", "fact_rows"), EDIT_APPLIED), changes=False),
    Case("steer caa", word_model, _steer("caa"), (BLOCK,), changes=False),
    Case("steer ablate", word_model, _steer("ablate"), (BLOCK,), changes=False),
    Case("steer ablate half", word_model, _steer("ablate-half"), (BLOCK,), changes=False),
    Case("sae steer", word_model, _sae_steer, (BLOCK,), changes=False),
    Case("diff change", lambda: tiny("llama"), _diff_change, (W_WRITE, BLOCK), changes=False),
    Case("knowledge neurons", word_model, _knowledge_neurons,
         (Point("torch.autograd", "grad"), BLOCK), changes=False),
    Case("ablate neurons", lambda: tiny("llama"), _ablate_neurons, (BLOCK,), changes=False),
]

_COUNTS: dict[tuple[str, str], int] = {}
_WARM: set[str] = set()


def _count(case: Case, point: Point, tmp: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """Calls of ``point`` in one clean run of ``case`` (cached); checks that the clean run is well-behaved."""
    key = (case.name, str(point))
    if case.name not in _WARM:  # fill caches (ROME's statistics) so that every run makes the same calls
        _undo(case.run(mixed(case.model()), tmp))
        _WARM.add(case.name)
    if key not in _COUNTS:
        m = mixed(case.model())
        before = full_state(m)
        inj = Injector(point)
        remove = inj.install(m, monkeypatch)
        try:
            result = case.run(m, tmp)
        finally:
            remove()
        if case.changes:
            assert full_state(m) != before, f"{case.name}: a clean run changed nothing"
            _undo(result)
        after = full_state(m)
        assert after == before, f"{case.name}: not restored after a clean run: {changed_keys(before, after)}"
        assert inj.calls > 0, f"{case.name}: {point} is never reached"
        _COUNTS[key] = inj.calls
    return _COUNTS[key]


PARAMS = [pytest.param(c, p, id=f"{c.name}-{p}") for c in CASES for p in c.points]


@pytest.mark.parametrize("case, point", PARAMS)
def test_interrupted_operation_leaves_the_model_as_it_was(case, point, tmp_path_factory, monkeypatch):
    tmp = tmp_path_factory.mktemp("cache", numbered=False) if not (
        (p := tmp_path_factory.getbasetemp() / "cache").exists()) else p  # ROME/MEMIT statistics: computed once
    monkeypatch.setenv("UNCOVER_CACHE", str(tmp))
    total = _count(case, point, tmp, monkeypatch)
    middle = (total + 1) // 2
    for n, exc in [(n, e) for n in sorted({1, middle, total}) for e in EXCEPTIONS] + [(middle, SIGINT)]:
        m = mixed(case.model())
        before = full_state(m)
        inj = Injector(point, n, exc)
        remove = inj.install(m, monkeypatch)
        try:
            with pytest.raises(KeyboardInterrupt if exc is SIGINT else exc,
                               match=None if exc is SIGINT else "injected"):
                case.run(m, tmp)
        finally:
            remove()
        after = full_state(m)
        assert after == before, f"{exc.__name__} at call {n}/{total}: changed {changed_keys(before, after)}"
