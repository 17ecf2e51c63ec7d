"""The operation layer itself: config validation, schema, CLI generation, result persistence, provenance."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny
from uncover.core.codec import transient
from uncover.core.config import Config, check_writable, fields_of, param
from uncover.core.errors import UsageError
from uncover.core.persist import load_result, save_result
from uncover.core.results import Result
from uncover.ops.provenance import weights_fingerprint
from uncover.ops.registry import Operation, execute
from uncover.ops.reproduce import compare, differences


@dataclass(frozen=True)
class DemoConfig(Config):
    """A config with one field of each kind."""

    prompt: str = param(help="Prompt text", positional=True, nonempty=True)
    k: int = param(5, help="Top-k", ge=1, le=100)
    scale: float = param(1.0, help="Scale", gt=0)
    mode: Literal["a", "b"] = param("a", help="Mode")
    layers: list[int] | None = param(None, help="Layers", unit="layer")
    targets: list[str] = param([], help="Targets", flag="--target")
    flag: bool = param(False, help="A switch")
    out: Path | None = param(None, help="Output file", path="out")

    def validate(self) -> None:
        if self.mode == "b" and self.k > 10:
            raise UsageError("DemoConfig: mode b takes k <= 10")


@pytest.mark.parametrize("kw, words", [
    ({"prompt": ""}, "empty"),
    ({"prompt": "   \n"}, "empty"),
    ({"prompt": "a\ud800b"}, "surrogate"),
    ({"prompt": "a\x00b"}, "NUL"),
    ({"prompt": "x", "k": 0}, ">= 1"),
    ({"prompt": "x", "k": -1}, ">= 1"),
    ({"prompt": "x", "k": 100000}, "<= 100"),
    ({"prompt": "x", "k": True}, "number"),
    ({"prompt": "x", "k": 2.5}, "integer"),
    ({"prompt": "x", "scale": float("nan")}, "finite"),
    ({"prompt": "x", "scale": float("inf")}, "finite"),
    ({"prompt": "x", "scale": 0.0}, "> 0"),
    ({"prompt": "x", "mode": "c"}, "mode"),
    ({"prompt": "x", "layers": "0,1"}, "list"),
    ({"prompt": "x", "targets": [3]}, "text"),
    ({"prompt": "x", "flag": 1}, "true or false"),
    ({"prompt": "x", "out": "/no/such/dir/x.html"}, "does not exist"),
    ({"prompt": "x", "mode": "b", "k": 20}, "mode b"),
    ({"prompt": None}, "required"),
])
def test_config_refuses_bad_values_with_one_line(kw, words):
    with pytest.raises(UsageError) as e:
        DemoConfig(**kw)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_config_normalises_and_round_trips(tmp_path):
    c = DemoConfig(prompt="hi", k=3, scale=2, layers=(0, 1), out=str(tmp_path / "x.html"))
    assert c.scale == 2.0 and isinstance(c.scale, float) and c.layers == [0, 1] and isinstance(c.out, Path)
    again = DemoConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    with pytest.raises(UsageError, match="did you mean"):
        DemoConfig.from_dict({"prompt": "x", "kk": 1})


def test_output_paths_checked_before_work(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_writable(tmp_path / "f", directory=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(UsageError, match="not writable"):
                check_writable(ro / "x.html")
    finally:
        ro.chmod(0o700)


def test_model_checks_layer_range():
    model = tiny("llama")
    DemoConfig(prompt="x", layers=[0, 2]).check_model(model)
    with pytest.raises(UsageError, match="out of range; this model has layers 0..2"):
        DemoConfig(prompt="x", layers=[3]).check_model(model)


def test_schema_lists_every_field_with_help_and_choices():
    s = DemoConfig.schema()
    by = {f["name"]: f for f in s["fields"]}
    assert set(by) == {f.name for f in fields_of(DemoConfig)}
    assert by["mode"]["choices"] == ["a", "b"] and by["k"]["ge"] == 1 and by["prompt"]["required"]
    assert by["targets"]["option"] == "--target" and all(f["help"] for f in s["fields"])
    json.dumps(s)


# ---- results ------------------------------------------------------------------------------------
@dataclass
class Inner:
    a: int
    b: tuple[int, str]


@dataclass
class Everything(Result):
    """A result holding one value of each kind the codec supports."""

    t: torch.Tensor
    half: torch.Tensor
    arr: np.ndarray
    frame: pd.DataFrame
    nested: dict[Any, Any]
    items: list[Any]
    inner: Inner
    nan: float
    path: Path
    none: Any = None
    live: Any = transient(default=None)

    def to_frame(self):
        return pd.DataFrame({"v": self.t.flatten().tolist()})

    def plot(self):
        import plotly.graph_objects as go

        return go.Figure(go.Bar(y=self.t.flatten().tolist()))


@pytest.fixture(autouse=True)
def _trust_this_module(monkeypatch):
    from uncover.core import codec

    monkeypatch.setattr(codec, "TRUSTED", {*codec.TRUSTED, "tests."})


def _everything() -> Everything:
    g = torch.Generator().manual_seed(0)
    frame = pd.DataFrame({"x": [1.5, float("nan"), 1e-300], "n": [1, 2, 3], "s": ["a", "b", None]})
    return Everything(torch.randn(3, 4, generator=g), torch.randn(5, generator=g).half()[1:4],
                      np.arange(6, dtype=np.int32).reshape(2, 3), frame,
                      {1: "one", (2, 3): [0.1, -0.0], "k": {"deep": torch.ones(2, dtype=torch.bool)}},
                      [1, "x", (4, 5), None, math.pi], Inner(7, (8, "nine")), float("nan"), Path("/tmp/x"),
                      live=object())


def test_save_load_every_kind_bit_exact(tmp_path):
    r = _everything()
    p = save_result(r, tmp_path / "r.safetensors")
    back = load_result(p)
    assert isinstance(back, Everything) and back.live is None
    assert back.t.equal(r.t) and back.half.dtype == torch.float16 and back.half.equal(r.half)
    assert np.array_equal(back.arr, r.arr) and back.arr.dtype == np.int32
    pd.testing.assert_frame_equal(back.frame, r.frame)
    assert back.nested[(2, 3)] == [0.1, -0.0] and back.nested[1] == "one"
    assert back.nested["k"]["deep"].dtype == torch.bool
    assert back.items == r.items and back.inner == r.inner and math.isnan(back.nan) and back.path == r.path
    assert differences(back, r)[0] == []


def test_bad_result_files_say_what_they_are(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(UsageError, match="no result file"):
        load_result(tmp_path / "none")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UsageError, match="not a readable result"):
        load_result(junk)
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(weights))
    with pytest.raises(UsageError, match="not an uncover result"):
        load_result(weights)
    good = save_result(_everything(), tmp_path / "g.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError):
        load_result(tmp_path / "cut.safetensors")


def test_save_refuses_unwritable_and_leaves_nothing_half_written(tmp_path):
    with pytest.raises(UsageError):
        save_result(_everything(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_sees_any_weight_change_and_nothing_else():
    model = tiny("llama")
    a = weights_fingerprint(model.model)
    assert a == weights_fingerprint(model.model)
    with torch.no_grad():
        p = next(model.model.parameters())
        old = p[0, 0].clone()
        p[0, 0] = torch.nextafter(old, old + 1)
        assert weights_fingerprint(model.model) != a
        p[0, 0] = old
    assert weights_fingerprint(model.model) == a


# ---- operations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class NormConfig(Config):
    """Residual norms of a batch of random tokens."""

    layer: int = param(0, help="Layer", unit="layer")
    seed: int = param(0, help="Seed of the tokens", ge=0)


@dataclass
class Norms(Result):
    layer: int
    norms: torch.Tensor

    def to_frame(self):
        return pd.DataFrame({"norm": self.norms.flatten().tolist()})

    def plot(self):
        import plotly.graph_objects as go

        return go.Figure(go.Bar(y=self.norms.flatten().tolist()))


def _norms(model, cfg: NormConfig, progress) -> Norms:
    ids = torch.randint(3, 60, (2, 6))  # seeded by execute through cfg.seed
    _, cache = model.run_with_cache(ids, names=[f"blocks.{cfg.layer}.hook_resid_post"])
    return Norms(cfg.layer, cache[f"blocks.{cfg.layer}.hook_resid_post"].norm(dim=-1))


NORM_OP = Operation("norms", NormConfig, _norms, Norms, "Residual norms")


def test_execute_stamps_provenance_and_result_reruns(tmp_path):
    from uncover.ops.reproduce import rerun

    model = tiny("llama")
    r = execute(NORM_OP, NormConfig(layer=1, seed=3), model)
    prov = r.provenance
    assert prov.operation == "norms" and prov.config == {"layer": 1, "seed": 3} and prov.seed == 3
    assert prov.model["fingerprint"] == weights_fingerprint(model.model) and prov.versions["torch"]
    back = load_result(r.save(tmp_path / "n.safetensors"))
    assert back.provenance == prov and back.norms.equal(r.norms)
    import uncover.ops.registry as reg

    reg._REGISTRY["norms"] = NORM_OP
    try:
        verdict, again = rerun(back, model)
        assert verdict.reproduced and verdict.same_weights and verdict.max_abs_diff == 0
        other = execute(NORM_OP, NormConfig(layer=1, seed=4), model)
        c = compare(r, other)
        assert c.config_changes == {"seed": [3, 4]} and c.differences and "delta" in " ".join(c.to_frame().columns)
        assert "Side by side" in c.to_html()
    finally:
        del reg._REGISTRY["norms"]
    with pytest.raises(UsageError, match="out of range"):
        execute(NORM_OP, NormConfig(layer=9), model)


def test_generated_cli_options_and_errors(monkeypatch):
    import typer

    from uncover.cli import generate

    op = Operation("demo", DemoConfig, lambda m, c, p: None, Result, "Demo operation", needs_model=False)
    seen = {}
    monkeypatch.setattr(generate, "run_command", lambda op, values: seen.update(values))
    app = typer.Typer()
    generate.add_operations(app, [op])
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["demo", "hello", "--k", "3", "-t", " a", "--target", " b", "--mode", "b",
                                   "--flag", "--json"])
    assert res.exit_code == 0, res.output
    cfg = generate.build_config(op, seen)
    assert cfg == DemoConfig(prompt="hello", k=3, targets=[" a", " b"], mode="b", flag=True)
    assert seen["as_json"] is True and "model" not in seen  # model-free operations get no --model
    with pytest.raises(UsageError, match="mode"):
        generate.build_config(op, {**seen, "mode": "z"})
    helptext = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"}).output
    flat = "".join(helptext.split())
    assert "Top-k" in flat and "Mode(oneof:a,b)" in flat
