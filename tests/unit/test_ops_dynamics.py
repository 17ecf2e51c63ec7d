"""Operations ``grok``, ``memorization scan`` and ``memorization train``: validation, CLI values,
``grok --resume`` refusing changed settings, and save/load round trips of their results."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import tiny
from uncover.cli.generate import build_config
from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.dynamics.grokking import GrokConfig, GrokSweepResult
from uncover.dynamics.grokking.report import GrokReport
from uncover.dynamics.memorization import LocalizationResult, MemorizationResult
from uncover.dynamics.memorization.report import MemorizationTraining
from uncover.dynamics.memorization.scan import ExtractionScanResult
from uncover.ops import execute, get_operation, load_result
from uncover.ops.reproduce import differences

GROK, SCAN, MEM = (get_operation(n) for n in ("grok", "memorization scan", "memorization train"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def round_trip(r, tmp_path):
    back = load_result(r.save(tmp_path / "r.safetensors"))
    assert type(back) is type(r) and differences(back, r)[0] == []
    assert back.to_dict() == r.to_dict() and back.cli_text() == r.cli_text()
    return back


# ---- grok ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"op": "^"}, "valid: +, -, *, /"),
    ({"lr": float("nan")}, "lr (--lr) must be a finite number"),
    ({"lr": 0}, "lr (--lr) must be > 0"),
    ({"threads": 0}, "threads (--threads) must be >= 1"),
    ({"p": 4}, "p (--p) must be >= 5"),
    ({"p": 9}, "prime"),
    ({"train_frac": 1.0}, "train_frac (--train-frac) must be < 1"),
    ({"weight_decay": -1}, "weight_decay"),
    ({"init_scale": float("inf")}, "finite"),
    ({"steps": 0}, "steps (--steps) must be >= 1"),
    ({"eval_every": 0}, "eval_every"),
    ({"compare": "lr"}, "valid: wd, fractions"),
    ({"resume": "/no/such/run"}, "does not exist"),
    ({"out": "/no/such/folder/run"}, "does not exist"),
])
def test_grok_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        GROK.config(**bad)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_grok_runs_resumes_and_refuses_changed_settings(tmp_path):
    run = tmp_path / "run"
    r = execute(GROK, GROK.config(p=7, steps=4, eval_every=2, out=run, threads=1), None)
    assert not GROK.needs_model
    assert r.run is not None and r.comparison is None and r.to_dict()["kind"] == "GrokkingResult"
    assert [row["step"] for row in r.to_dict()["records"]] == [0, 2, 4]
    round_trip(r, tmp_path)
    with pytest.raises(UsageError, match=r"different lr \(--lr 0.01; the run has 0.001\).*only --steps may change"):
        GROK.config(resume=run, lr=0.01, steps=6)
    with pytest.raises(UsageError, match="not both"):
        GROK.config(resume=run, out=tmp_path / "other")
    with pytest.raises(UsageError, match="without --resume"):
        GROK.config(resume=run, compare="wd")
    with pytest.raises(UsageError, match="no grokking config"):
        GROK.config(resume=tmp_path)
    messages: list[str] = []
    listen = Progress(enabled=False, listener=lambda kind, text: messages.append(text) if kind == "message" else None)
    again = execute(GROK, GROK.config(resume=run, p=7, steps=6), None, progress=listen)
    assert again.to_dict()["records"][-1]["step"] == 6
    # the defaults of --eval-every (100) and --threads are not the run's: the stored values are used, and said so
    assert any("stored eval_every=2" in m and "only --steps may change" in m for m in messages), messages
    assert not any("p=" in m for m in messages)


def test_grok_cli_values():
    c = build_config(GROK, {"p": 11, "op": "*", "compare": "fractions", "threads": 1})
    assert c.grok_config().op == "*" and c.compare == "fractions" and c.grok_config().steps == GrokConfig().steps


def test_grok_comparison_report_round_trip(tmp_path):
    m = pd.DataFrame({"step": [0, 10], "train_acc": [0.1, 1.0], "test_acc": [0.0, 0.2], "test_loss": [4.0, 3.0]})
    r = GrokReport(comparison=GrokSweepResult({"wd=1": (GrokConfig(p=7), m), "wd=0": (GrokConfig(p=7), m)}))
    back = round_trip(r, tmp_path)
    assert back.comparison.runs["wd=0"][0] == GrokConfig(p=7) and back.to_dict()["kind"] == "GrokSweepResult"
    assert [rec["run"] for rec in back.to_dict()["records"]] == ["wd=1", "wd=0"]
    with pytest.raises(ValueError, match="exactly one"):
        GrokReport()


# ---- memorization ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"text": "gpl"}, "neither a built-in text (mit, zen, lorem"),
    ({"text": " "}, "text (--text) is empty"),
    ({"k": 0}, "k (--k) must be >= 1"),
    ({"suffix": 0}, "suffix"),
    ({"stride": -2}, "stride"),
])
def test_scan_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        SCAN.config(**bad)
    assert words in str(e.value)


def test_scan_config_reads_a_file_and_needs_a_tokenizer(tmp_path):
    good, bad = tmp_path / "a.txt", tmp_path / "b.txt"
    good.write_text("some text to scan", encoding="utf-8")
    bad.write_bytes(b"\xff\xfe\xfa not utf-8")
    assert SCAN.config(text=str(good)).body() == "some text to scan"
    with pytest.raises(UsageError, match="UTF-8"):
        SCAN.config(text=str(bad))
    with pytest.raises(UsageError, match="no tokenizer"):
        SCAN.config(text="zen").check_model(tiny("gpt2"))


def test_scan_result_round_trip(tmp_path):
    w = pd.DataFrame({"start": [4, 8], "match_len": [3, 0], "exact": [True, False], "target": [" a b c", " d"],
                      "generated": [" a b c", " x"]})
    r = ExtractionScanResult(w, [(4, 7, " a b c")], k=4, suffix=3, n_tokens=12, name="t")
    back = round_trip(r, tmp_path)
    assert back.spans == [(4, 7, " a b c")] and back.extractable_fraction == 0.5


@pytest.mark.parametrize("bad, words", [
    ({"dup_counts": []}, "at least 1"),
    ({"dup_counts": [0, 2]}, "dup_counts (--dup-counts) must be >= 1"),
    ({"k_prefix": 64}, "k_prefix (64) must be between 1 and seq_len - 1"),
    ({"k_prefix": 0}, "k_prefix (--k) must be >= 1"),
    ({"threads": 0}, "threads"),
    ({"steps": 0}, "steps"),
    ({"per_count": 0}, "per_count"),
])
def test_memorization_train_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        MEM.config(**bad)
    assert words in str(e.value)


def test_memorization_train_cli_values():
    assert build_config(MEM, {"dup_counts": "1, 2,8", "k_prefix": 16}).mem_config().dup_counts == (1, 2, 8)
    with pytest.raises(UsageError, match="comma-separated integers"):
        build_config(MEM, {"dup_counts": "one"})


def test_memorization_train_runs_and_round_trips(tmp_path):
    r = execute(MEM, MEM.config(**MEM.example), None)
    assert not MEM.needs_model and r.localization is None
    d = r.to_dict()
    assert d["kind"] == "MemorizationResult" and {rec["dups"] for rec in d["records"]} == {0, 1, 2}
    assert r.provenance.config["dup_counts"] == [1, 2] and "provenance" in d
    round_trip(r, tmp_path)


def test_memorization_training_with_localization(tmp_path):
    h = pd.DataFrame({"step": [0, 2], "kind": ["canary", "canary"], "dups": [4, 4], "n": [2, 2], "loss": [5.0, 1.0],
                      "token_mem": [0.1, 0.9], "extractable": [0.0, 1.0]})
    mem = MemorizationResult(h, pd.DataFrame({"attack": ["loss"], "members": ["corpus x1"], "auroc": [0.7]}),
                             {"k_prefix": 32, "dup_counts": (4,)})
    loc = LocalizationResult(pd.DataFrame({"layer": [0], "mlp_mem": [1.0], "mlp_nonmem": [0.5], "attn_mem": [0.2],
                                           "attn_nonmem": [0.1]}), [(0, 3), (0, 7)],
                             pd.DataFrame({"ablation": ["none", "top"], "k": [0, 2], "extractable": [1.0, 0.5],
                                           "nonmem_loss": [2.0, 2.1], "draws": [1, 1]}))
    r = MemorizationTraining(mem, loc)
    assert set(r.to_dict()) == {"memorization", "localization"}
    assert r.cli_text() == mem.summary() + "\n" + loc.summary()
    page = r.to_html(tmp_path / "m.html")
    assert "Memorization vs duplication" in page and "Localising memorization" in page
    back = round_trip(r, tmp_path)
    assert back.localization.top_neurons == [(0, 3), (0, 7)] and back.memorization.config["dup_counts"] == (4,)


def test_choices_are_the_library_ones():
    from typing import get_args

    from uncover.core.config import _optional, fields_of
    from uncover.dynamics.grokking import OPS
    from uncover.dynamics.ops import COMPARISONS

    types = {f.name: _optional(f.type)[0] for f in fields_of(GROK.config)}
    assert get_args(types["op"]) == OPS and get_args(types["compare"]) == COMPARISONS
    assert GROK.config.schema()["fields"][1]["choices"] == list(OPS)
