"""Task generators: structure of the pairs, JSONL round trip and errors (the tokenizer-level checks are e2e)."""

from __future__ import annotations

import json

import pytest

from uncover.core.errors import UncoverError
from uncover.data.tasks import FACTS, NAMES, TASKS, facts, from_jsonl, greater_than, ioi


@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_ioi_swap_flips_the_answer(order):
    t = ioi(10, order=order, seed=4)
    assert len(t) == 10 and {p.meta["order"] for p in t.pairs} == {order}
    for p in t.pairs:
        io, s = p.answer.strip(), p.wrong.strip()
        assert io != s and io in NAMES and s in NAMES
        first = p.clean.index(io) < p.clean.index(s)
        assert first == (order == "ABBA")
        # the second mention of the subject becomes the IO: the clean prompt mentions S twice, the corrupt IO twice
        assert p.clean.count(s) == 2 and p.clean.count(io) == 1
        assert p.corrupt.count(io) == 2 and p.corrupt.count(s) == 1
        assert p.clean.replace(s, "#") .count("#") == 2 and p.clean.rsplit(s, 1)[0] == p.corrupt.rsplit(io, 1)[0]


def test_ioi_abc_corruption_has_no_trace_of_the_clean_names():
    t = ioi(14, corrupt="abc", seed=2)
    swap = ioi(14, seed=2)
    for p, q in zip(t.pairs, swap.pairs):
        assert p.clean == q.clean  # same clean prompts as the swap variant
        for name in (p.answer, p.wrong):
            assert name.strip() not in p.corrupt.split() and name not in p.corrupt
        tmpl = p.meta["template"]
        assert p.corrupt.split()[-1] == tmpl.split()[-1]
        assert len(p.corrupt.split()) == len(p.clean.split())
    assert len({p.meta["template"] for p in t.pairs}) > 3


def test_ioi_both_alternates_and_is_seeded():
    t = ioi(6)
    assert [p.meta["order"] for p in t.pairs] == ["ABBA", "BABA"] * 3
    assert ioi(6, seed=1).pairs == ioi(6, seed=1).pairs != ioi(6, seed=2).pairs
    with pytest.raises(UncoverError, match="valid: ABBA, BABA, both"):
        ioi(2, order="AB")
    with pytest.raises(UncoverError, match="valid: swap, abc"):
        ioi(2, corrupt="shuffle")


def test_facts_corrupt_with_another_subject_of_the_same_template():
    t = facts(seed=0)
    assert len(t) == len(FACTS)
    for p in t.pairs:
        subj, tmpl = p.meta["subject"], p.meta["template"]
        assert p.clean == tmpl.format(subj)
        if p.corrupt != p.clean:
            other = next(f for f in FACTS if tmpl.format(f[0]) == p.corrupt)
            assert other[1] == tmpl and other[2] == p.wrong != p.answer


def test_greater_than_answers_are_the_first_digit():
    t = greater_than(20, seed=5)
    for p in t.pairs:
        yy = p.meta["yy"]
        assert f"17{yy:02d}" in p.clean and "1701" in p.corrupt
        assert p.answer == str(yy // 10) and int(p.wrong) == int(p.answer) - 1
        assert p.clean.endswith("to the year 17") and p.corrupt.endswith("to the year 17")


def test_jsonl_round_trip_and_errors(tmp_path):
    t = ioi(3, seed=7)
    path = tmp_path / "pairs.jsonl"
    t.to_jsonl(path)
    back = from_jsonl(path)
    assert back.name == "pairs" and back.pairs == t.pairs
    assert [p.meta for p in back.pairs] == [p.meta for p in t.pairs]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "a", "answer": "b"}) + "\n")
    with pytest.raises(UncoverError, match=r"bad.jsonl:1: missing field\(s\) corrupt, wrong"):
        from_jsonl(bad)
    bad.write_text("\n{not json\n")
    with pytest.raises(UncoverError, match="bad.jsonl:2: not JSON"):
        from_jsonl(bad)


def test_registry():
    assert set(TASKS) == {"ioi", "facts", "greater_than"}
