"""A tiny model trained for a few steps to store facts, for the editing identities of the family matrix."""

from __future__ import annotations

import torch

from tests.families.kinds import family_model, with_words
from uncover import HookedModel

FACTS = ["big ben london", "the colosseum rome", "the tower paris"]  # the subject ends where the object is read
OLD = ["big ben is in the city of london", "the colosseum is in the city of rome",
         "the tower is in the city of paris"]


def trained(kind: str, steps: int = 40, lr: float = 1e-2, seed: int = 0) -> HookedModel:
    """The realistic-scale tiny ``kind`` trained on :data:`FACTS` (next-token loss) until it recalls them."""
    m = with_words(family_model(kind, seed=seed))
    ids = torch.tensor([m.tokenizer(f)["input_ids"] for f in FACTS])
    opt = torch.optim.Adam(m.model.parameters(), lr=lr)
    m.model.train()
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            logits = m.model(input_ids=ids, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            opt.step()
    m.model.eval()
    m.model.zero_grad(set_to_none=True)
    return m
