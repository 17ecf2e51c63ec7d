"""Operations heads, neurons, knowledge-neurons and sae on the embedded model: model-dependent checks, the resumable
SAE run directory read back by sae eval / sae show, and pattern mode's default heads."""

from __future__ import annotations

import json

import pytest
import torch

import uncover as uc
from uncover.core.errors import UncoverError, UsageError

pytestmark = pytest.mark.e2e


def test_model_checks_refuse_before_work(real):
    kn = uc.get_operation("knowledge-neurons").config
    with pytest.raises(UsageError, match=r"layers \(--layers\) 30 is out of range"):
        kn(prompts=["The capital of France is"], target=" Paris", layers=[29, 30]).check_model(real)
    with pytest.raises(UncoverError, match="not one"):
        kn(prompts=["The capital of France is"], target=" Parisian").check_model(real)
    with pytest.raises(UsageError, match=r"layer \(--layer\) 30 is out of range"):
        uc.get_operation("neurons").config(layer=30).check_model(real)
    with pytest.raises(UsageError, match="takes at most 8192"):
        uc.get_operation("heads").config(detect="induction", seq_len=5000).check_model(real)


def test_heads_pattern_defaults_to_top_induction_heads(real):
    r = uc.run("heads", real, pattern="The cat sat. The cat", n=2, seq_len=10, top=2)
    assert r.mode == "pattern" and len(r.result.heads) == 2
    from uncover.heads.detectors import head_scores

    top = head_scores(real, "induction", n=2, seq_len=10).top(2)
    assert r.result.heads == [(li, h) for li, h, _ in top]
    assert r.result.patterns.shape == (2, 6, 6)


def test_sae_train_resume_eval_show(real, tmp_path):
    run = tmp_path / "run"
    kw = {"out": run, "hook": "blocks.2.hook_resid_post", "tokens": 512, "block_len": 64, "batch_size": 128,
          "expansion": 1, "k": 8, "checkpoint_every": 2}
    first = uc.run("sae train", real, steps=4, **kw)
    assert (run / "sae" / "cfg.json").is_file() and first.metrics[-1]["step"] == 3
    resumed = uc.run("sae train", real, steps=8, resume=True, **kw)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed.metrics[-1]["step"] == 7 and rows[-1]["step"] == 7 and resumed.tokens == 4 * 128
    ev = uc.run("sae eval", real, path=run, blocks=1)
    assert ev.hook == "blocks.2.hook_resid_post" and 0 < ev.l0 <= 8
    dash = uc.run("sae show", real, path=run / "sae", feature=[1, 3], blocks=2)
    assert dash.features == [1, 3] and "<h3>Feature " in dash.to_html()
    back = uc.load_result(dash.save(tmp_path / "dash.safetensors"))
    assert torch.equal(back.density, dash.density) and back.top_tokens == dash.top_tokens
    with pytest.raises(UsageError, match=r"feature \(--feature\) 576 is out of range"):
        uc.run("sae show", real, path=run, feature=[576])
