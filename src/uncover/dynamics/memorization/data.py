"""Training data with known duplication: corpus byte sequences, canaries and duplicated text.

Tokens are UTF-8 bytes (vocabulary 256), so no tokenizer is needed and extraction is
checked byte for byte. Canaries are random secrets in a fixed template (Carlini et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uncover.data.corpus import corpus_texts, split_documents
from uncover.dynamics.memorization.config import MemConfig, MemConfigError

VOCAB = 256
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
HEAD = "the secret code is: "


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as token ids ``[n]``.

    >>> encode("hé").tolist()
    [104, 195, 169]
    """
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: torch.Tensor | list[int]) -> str:
    """Inverse of :func:`encode` (invalid byte runs are replaced).

    >>> decode(encode("key 42"))
    'key 42'
    """
    data = bytes(int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Sequence:
    """One tracked sequence: its tokens, kind and number of copies in training (0 = held out)."""

    tokens: torch.Tensor
    kind: str
    dups: int


@dataclass(frozen=True)
class MemData:
    """The training stream and the tracked sequences.

    ``train`` ``[n_train, seq_len]`` holds every training sequence (copies included, unshuffled);
    ``tracked`` lists canaries and duplicated corpus sequences (``dups`` ≥ 1), unseen canaries
    and held-out corpus sequences (``dups`` = 0) and a sample of single-copy corpus sequences.
    """

    train: torch.Tensor
    tracked: list[Sequence]

    def group(self, kind: str | None = None, dups: int | None = None) -> torch.Tensor:
        """Tokens ``[n, seq_len]`` of the tracked sequences of one kind and/or duplicate count."""
        rows = [s.tokens for s in self.tracked if (kind is None or s.kind == kind) and (dups is None or s.dups == dups)]
        return torch.stack(rows) if rows else torch.zeros(0, 0, dtype=torch.long)


def canary(secret: str, seq_len: int) -> str:
    """A canary string of exactly ``seq_len`` bytes: a fixed head, then ``secret`` (cycled or cut to fit).

    :func:`make_data` draws secrets of exactly the needed length, so a canary's suffix never
    repeats its prefix (copying cannot extract it; only memorization can).

    >>> canary("abc123", 32)
    'the secret code is: abc123abc123'
    """
    head = HEAD
    body = (secret * (seq_len // max(len(secret), 1) + 1))[: seq_len - len(head)]
    return head + body


def corpus_sequences(seq_len: int, split: str, seed: int = 0) -> torch.Tensor:
    """Non-overlapping byte sequences ``[n, seq_len]`` of one split of the embedded corpus."""
    ids: list[int] = []
    for doc in split_documents(corpus_texts(), split, seed=seed):
        ids.extend(doc.encode("utf-8"))
        ids.append(10)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def make_data(cfg: MemConfig) -> MemData:
    """Build the training set of ``cfg`` (see :class:`MemData`).

    >>> d = make_data(MemConfig(n_corpus=10, dup_counts=(1, 3), per_count=2, n_heldout=4))
    >>> d.train.shape, sorted({(s.kind, s.dups) for s in d.tracked})[:3]
    (torch.Size([26, 64]), [('canary', 0), ('canary', 1), ('canary', 3)])
    """
    g = torch.Generator().manual_seed(cfg.seed)
    pool = corpus_sequences(cfg.seq_len, "train", cfg.seed)
    held = corpus_sequences(cfg.seq_len, "heldout", cfg.seed)
    n_dup = cfg.per_count * len(cfg.dup_counts)
    if len(pool) < cfg.n_corpus + n_dup or len(held) < cfg.n_heldout:
        raise MemConfigError(f"the corpus has {len(pool)} train and {len(held)} held-out sequences of "
                             f"{cfg.seq_len} bytes; need {cfg.n_corpus + n_dup} and {cfg.n_heldout}: "
                             "lower n_corpus, per_count or n_heldout")
    order = torch.randperm(len(pool), generator=g)
    corpus = pool[order[: cfg.n_corpus]]
    dup_src = pool[order[cfg.n_corpus: cfg.n_corpus + n_dup]]
    heldout = held[torch.randperm(len(held), generator=g)[: cfg.n_heldout]]

    def secret() -> str:
        idx = torch.randint(len(ALPHABET), (max(cfg.seq_len - len(HEAD), 1),), generator=g).tolist()
        return "".join(ALPHABET[i] for i in idx)

    parts, tracked = [corpus], []
    for i, c in enumerate(cfg.dup_counts):
        for j in range(cfg.per_count):
            can = encode(canary(secret(), cfg.seq_len))
            dup = dup_src[i * cfg.per_count + j]
            parts += [can.expand(c, -1), dup.expand(c, -1)]
            tracked += [Sequence(can, "canary", c), Sequence(dup, "corpus", c)]
    for _ in range(cfg.per_count):
        tracked.append(Sequence(encode(canary(secret(), cfg.seq_len)), "canary", 0))
    tracked += [Sequence(s, "corpus", 0) for s in heldout]
    tracked += [Sequence(s, "member", 1) for s in corpus[: cfg.n_heldout]]
    return MemData(torch.cat(parts).contiguous(), tracked)
