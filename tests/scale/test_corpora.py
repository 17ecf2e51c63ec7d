"""Corpora streamed from text, JSONL, Parquet and saved datasets: same documents, fingerprints, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.scale.conftest import documents, word_tokenizer
from uncover.core.errors import UsageError
from uncover.scale.corpora import Corpus, token_blocks

DOCS = documents(12)


def write_all(tmp_path) -> dict[str, object]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(d.replace(" a ", " a\n", 1) for d in DOCS) + "\n", encoding="utf-8")
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"body": d}) + "\n\n" for d in DOCS), encoding="utf-8")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": DOCS, "n": list(range(len(DOCS)))}), pqf, row_group_size=5)
    ds = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(str(ds))
    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"body": DOCS}), "test": datasets.Dataset.from_dict({"body": DOCS[:2]})}
    ).save_to_disk(str(dd))
    return {"text": txt, "jsonl": jl, "parquet": pqf, "dataset": ds, "dict": dd}


def test_every_format_streams_the_same_documents_and_fingerprints_its_bytes(tmp_path):
    paths = write_all(tmp_path)
    for kind, p in paths.items():
        c = Corpus.open(p, field="body")
        got = list(c.texts())
        assert [" ".join(d.split()) for d in got] == DOCS, kind
        assert c.kind == ("dataset" if kind == "dict" else kind)
        assert c.fingerprint() == Corpus.open(p, field="body").fingerprint()
    assert list(Corpus.open(paths["dict"], field="body", split="test").texts()) == DOCS[:2]
    fps = {Corpus.open(p, field="body").fingerprint() for p in paths.values()}
    assert len(fps) == len(paths)
    before = Corpus.open(paths["jsonl"], field="body").fingerprint()
    paths["jsonl"].write_text(paths["jsonl"].read_text() + json.dumps({"body": "one more"}) + "\n")
    assert Corpus.open(paths["jsonl"], field="body").fingerprint() != before


def test_wrong_fields_and_broken_files_are_usage_errors_naming_the_choices(tmp_path):
    paths = write_all(tmp_path)
    with pytest.raises(UsageError, match=r"line 1: no field 'text' \(found: body\)"):
        list(Corpus.open(paths["jsonl"]).texts())
    with pytest.raises(UsageError, match="no column 'text'; valid: body, n"):
        list(Corpus.open(paths["parquet"]).texts())
    with pytest.raises(UsageError, match="no column 'text'; valid: body"):
        Corpus.open(paths["dataset"])
    with pytest.raises(UsageError, match="no split 'dev'; valid: train, test"):
        Corpus.open(paths["dict"], field="body", split="dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        list(Corpus.open(bad).texts())
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        list(Corpus.open(broken).texts())
    nums = tmp_path / "nums.jsonl"
    nums.write_text('{"text": 3}\n')
    with pytest.raises(UsageError, match="holds int, not text"):
        list(Corpus.open(nums).texts())
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(UsageError, match="not UTF-8"):
        list(Corpus.open(binary).texts())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a folder saved by datasets"):
        Corpus.open(tmp_path / "empty")
    with pytest.raises(UsageError, match="unknown format '.csv'"):
        Corpus.open(tmp_path / "x.csv")
    with pytest.raises(UsageError, match="no such file"):
        Corpus.open(tmp_path / "missing.txt")


def test_token_blocks_are_the_concatenated_documents_cut_in_blocks(tmp_path):
    tok = word_tokenizer()
    c = Corpus.open(write_all(tmp_path)["jsonl"], field="body")
    ref = [i for d in DOCS for i in [*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    for per_call in (1, 5, 64):
        blocks = torch.stack(list(token_blocks(tok, c, 7, docs_per_call=per_call)))
        n = len(ref) // 7
        assert blocks.tolist() == torch.tensor(ref[: n * 7]).view(n, 7).tolist()
    assert len(list(token_blocks(tok, c, 7, max_blocks=3, docs_per_call=2))) == 3
