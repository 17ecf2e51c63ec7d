"""One configuration per operation that fits the tiny word-tokenizer models of the family matrix."""

from __future__ import annotations

CLEAN = "when john and mary went to the store then mary gave a drink to"
CORRUPT = "when john and mary went to the store then john gave a drink to"
PAIR = {"clean": CLEAN, "corrupt": CORRUPT, "answer": " john", "wrong": " mary"}
FACT = "big ben is in the city of"

#: operation -> config fields (tiny: 3 layers, 4 heads, d_mlp 48); long or model-free ones are left out
CASES: dict[str, dict] = {
    "lens": {"prompt": FACT, "targets": [" london"]},
    "dla": {"prompt": CLEAN, "answer": " john", "wrong": " mary"},
    "patch": PAIR,
    "attribute": {**PAIR, "compare": True},
    "path": {**PAIR, "receivers": ["L2H0.q"], "receiver_positions": [-1]},
    "trace": {"prompt": FACT, "subject": "big ben", "answer": " london", "kind": "all", "samples": 2, "window": 2},
    "circuit": {**PAIR, "edges": 5},
    "heads": {"detect": "induction", "n": 2, "seq_len": 6},
    "knowledge-neurons": {"prompts": [FACT], "target": " london", "layers": [1, 2], "steps": 2},
    "dola": {"prompts": [FACT], "max_new_tokens": 2, "layers": "low"},
    "steer": {"prompts": ["i be"], "positive": "good", "negative": "bad", "layer": 1, "scale": 5.0,
              "max_new_tokens": 2},
    "prune": {"method": "wanda", "sparsity": 0.3, "n_samples": 2, "eval_blocks": 1},
}
