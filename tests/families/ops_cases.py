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
    "neurons": {"layer": 1, "neuron": [0, 1], "k": 3, "blocks": 4},
    "probe": {"data": "sentiment", "layers": [1], "folds": 2},
    "read": {"data": "sentiment", "layers": [1, 2]},
    "train-lens": {"out": "lens.safetensors", "steps": 2},
    "memorization scan": {"text": "lorem", "k": 8, "suffix": 4, "stride": 32},
    "edit": {"prompt": "{} is in the city of", "subject": "big ben", "target": " rome", "method": "rome", "layer": 1,
             "mom2_samples": 128, "gen_tokens": 0},
    "sae train": {"out": "sae-run", "hook": "blocks.1.hook_resid_post", "tokens": 256, "block_len": 32, "steps": 3,
                  "batch_size": 64, "expansion": 1, "k": 4, "checkpoint_every": 3},
}
#: operations that read the corpus (seconds each): run on one family per adapter feature, not on all
CORPUS_OPS = ("prune", "neurons", "train-lens", "edit", "sae train")
CORPUS_KINDS = ("llama-gqa", "gemma2", "gpt2", "gpt_neox", "phi", "phi3", "olmo", "gpt_bigcode", "falcon", "glm4",
                "gpt_oss")  # gpt_oss: the prune operation on a mixture of experts (calibrated per expert)

"""Left out: ``ccs`` (its truth pairs need words the tiny vocabulary lacks), ``sae eval``/``sae show`` (a trained
SAE of the real model), ``harvest``, ``diff``, ``edit-sweep`` (dataset-scale jobs built on the operations above),
and the model-free ``grok``, ``superposition`` and ``memorization train``."""
