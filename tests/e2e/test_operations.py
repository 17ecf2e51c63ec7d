"""The registry is complete: every operation has a documented config, a CLI command and a docstring example
(``Operation.example_code``) that runs as a doctest on the embedded model, whose result saves, loads bit-exactly and
(when deterministic and quick) reruns identically."""

from __future__ import annotations

import os

import pytest
import torch
from typer.main import get_command

import uncover as uc
from uncover.cli.main import build_app
from uncover.core.config import Config, fields_of
from uncover.ops.provenance import weights_fingerprint
from uncover.ops.reproduce import differences, rerun

pytestmark = pytest.mark.e2e

OPS = uc.operations()
NAMES = [op.name for op in OPS]


def test_every_operation_is_declared_and_documented():
    assert len(OPS) >= 25, NAMES
    for op in OPS:
        assert issubclass(op.config, Config) and op.help, op.name
        for f in fields_of(op.config):
            assert f.spec.help and f.spec.help != f.name, (op.name, f.name)
        assert op.example is not None, f"{op.name} has no example"
        op.config(**op.example)  # the example is a valid config


def test_every_operation_has_a_cli_command():
    cli = get_command(build_app())
    for op in OPS:
        cmd = cli
        for part in op.name.split():
            assert part in cmd.commands, f"no CLI command for {op.name}"  # type: ignore[attr-defined]
            cmd = cmd.commands[part]  # type: ignore[attr-defined]
        options = {o for p in cmd.params for o in p.opts}
        for f in fields_of(op.config):
            if f.spec.cli and not f.spec.positional:
                assert f.option in options, (op.name, f.option)


@pytest.fixture
def in_tmp(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


def _run_example(op, model):
    """Run the operation's example as the doctest it documents; return the result ``r`` it makes."""
    import doctest

    globs = {"model": model}
    test = doctest.DocTestParser().get_doctest(op.example_code(), globs, op.name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    runner.run(test, out=out.append, clear_globs=False)
    assert runner.failures == 0, "".join(out)
    return test.globs["r"]


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_round_trips_and_reruns(name, real, in_tmp):
    op = uc.get_operation(name)
    before = weights_fingerprint(real.model)
    snapshot = {k: v.clone() for k, v in real.model.state_dict().items()} if op.changes_weights else None
    threads = torch.get_num_threads()
    try:
        r = _run_example(op, real if op.needs_model else None)
    except BaseException:
        if snapshot is not None:  # never leave the shared model changed for the tests after this one
            real.model.load_state_dict(snapshot)
        raise
    finally:
        torch.set_num_threads(threads)
    try:
        assert isinstance(r, op.result) and r.provenance.operation == name
        r.to_frame()
        r.to_json()
        back = uc.load_result(r.save(in_tmp / "r.safetensors"))
        assert type(back) is type(r) and back.provenance == r.provenance
        assert differences(back, r)[0] == [], f"{name}: the loaded result differs"
        if op.deterministic and not op.long and not op.changes_weights:
            verdict, _ = rerun(back, real if op.needs_model else None)
            assert verdict.reproduced, verdict.summary()
    finally:
        if op.changes_weights:
            r.revert()
    assert weights_fingerprint(real.model) == before, f"{name} left the model changed"
