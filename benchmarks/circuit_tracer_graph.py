"""circuit-tracer's attribution graph of a prompt over uncover's transcoders (run in circuit-tracer's environment).

``bench_graph.py --circuit-tracer PYTHON`` runs this file with the interpreter of an environment
holding circuit-tracer 0.5.0 (``benchmarks/setup_bench_env.sh`` makes ``.bench-ct-venv``: circuit-tracer
pins ``transformers<=4.57.3``, uncover needs 5, so it cannot share uncover's environment). It imports
nothing of uncover: it reads

- the embedded model as uncover converted it (a Hugging Face Llama directory: ``config.json`` and
  ``model.safetensors``), built as a TransformerLens ``HookedTransformer`` (TransformerLens has no
  official entry for SmolLM2, so the config is written from ``config.json`` the way TransformerLens's
  Llama branch does, with ``rope_theta``) and wrapped as circuit-tracer's
  ``TransformerLensReplacementModel``;
- uncover's per-layer transcoders, in SAELens's format (``layer_{l}/cfg.json`` and
  ``sae_weights.safetensors``), as circuit-tracer ``SingleLayerTranscoder``\\ s. Two conversions, both
  exact: circuit-tracer stores ``W_enc`` as ``[d_sae, d_model]`` (SAELens: ``[d_model, d_sae]``), and it
  reads TransformerLens's ``ln2.hook_normalized``, which is the normalised residual *before* the norm's
  weight ``w`` (uncover's, like Hugging Face's norm output, is after it), so ``w`` is folded into
  ``W_enc`` and ``W_skip``. The activation is ``relu(TopK(pre))`` as uncover's (circuit-tracer's own
  ``TopK`` keeps negative values);

and runs ``circuit_tracer.attribute`` on the given token ids and target. circuit-tracer zeroes features
and error nodes at position 0 (a BOS it assumes); uncover does not, so this sets ``zero_positions``
to an empty slice. The graph (adjacency, node ids, timings) goes to ``--out`` (safetensors + JSON).

    .bench-ct-venv/bin/python benchmarks/circuit_tracer_graph.py --model-dir DIR --transcoders DIR \\
        --tokens 504,3575,282,4649,314 --target 7042 --max-feature-nodes 256 --batch-size 32 --out /tmp/ct
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def load_model(model_dir: Path):  # -> a HookedTransformer config, state dict and tokenizer
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    c = json.loads((model_dir / "config.json").read_text())
    if c.get("model_type") != "llama":
        raise SystemExit(f"{model_dir}: model_type {c.get('model_type')!r}; this comparison handles llama only")
    theta = (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0))
    hf_cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                         intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                         num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                         max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
                         rope_theta=theta, tie_word_embeddings=c.get("tie_word_embeddings", False))
    hf = LlamaForCausalLM(hf_cfg)
    sd = load_file(model_dir / "model.safetensors")
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"weights do not match: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    cfg = HookedTransformerConfig(
        d_model=c["hidden_size"], d_head=c["hidden_size"] // c["num_attention_heads"],
        n_heads=c["num_attention_heads"], d_mlp=c["intermediate_size"], n_layers=c["num_hidden_layers"], n_ctx=2048,
        eps=c["rms_norm_eps"], d_vocab=c["vocab_size"], act_fn=c["hidden_act"],
        n_key_value_heads=c["num_key_value_heads"] if c["num_key_value_heads"] != c["num_attention_heads"] else None,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c["hidden_size"] // c["num_attention_heads"], rotary_base=theta, final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM", model_name="SmolLM2-135M-Instruct", tokenizer_prepends_bos=False,
        default_prepend_bos=False, dtype=torch.float32, device="cpu")
    state = {k: v.detach().clone() for k, v in convert_llama_weights(hf, cfg).items()}
    ln2 = [hf.model.layers[la].post_attention_layernorm.weight.detach().clone() for la in range(cfg.n_layers)]
    # transformers 4.57 does not know the 5.x tokenizer class name in tokenizer_config.json: read tokenizer.json
    special = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                  **{k: special[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                                     if k in special})
    return cfg, state, tok, ln2


def load_transcoders(path: Path, ln2: list[torch.Tensor]):
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
    from safetensors.torch import load_file

    tcs = {}
    for la, w in enumerate(ln2):
        d = path / f"layer_{la}"
        cfg = json.loads((d / "cfg.json").read_text())
        if cfg.get("activation_fn_str") != "topk":
            raise SystemExit(f"{d}: activation {cfg.get('activation_fn_str')!r}; this comparison handles topk")
        p = load_file(d / "sae_weights.safetensors")
        topk = TopK(int(cfg["k"]))
        tc = SingleLayerTranscoder(cfg["d_in"], cfg["d_sae"], lambda x, topk=topk: torch.relu(topk(x)), la,
                                   skip_connection="W_skip" in p, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            tc.W_enc.copy_((p["W_enc"] * w[:, None]).T)  # fold the norm weight: x_tl @ (w * W_enc)
            tc.b_enc.copy_(p["b_enc"])
            tc.W_dec.copy_(p["W_dec"])
            tc.b_dec.copy_(p["b_dec"])
            if "W_skip" in p:
                tc.W_skip.copy_(p["W_skip"] * w[None, :])
        tcs[la] = tc
    return TranscoderSet(tcs, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out",
                         scan="uncover")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--transcoders", type=Path, required=True)
    p.add_argument("--tokens", required=True, help="comma-separated token ids")
    p.add_argument("--target", type=int, required=True, help="target token id")
    p.add_argument("--max-feature-nodes", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--update-interval", type=int, default=1, help="batches between influence re-rankings")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--validate-json", type=Path, default=None,
                   help="an uncover graph JSON to validate against circuit-tracer's viewer models")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import circuit_tracer
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from safetensors.torch import save_file

    schema = "not checked"
    if args.validate_json is not None:
        from circuit_tracer.frontend.graph_models import Model

        doc = Model.model_validate(json.loads(args.validate_json.read_text()))
        schema = f"valid ({len(doc.nodes)} nodes, {len(doc.links)} links)"
    cfg, state, tok, ln2 = load_model(args.model_dir)
    rm = TransformerLensReplacementModel(cfg)  # TransformerLens would reload the tokenizer with AutoTokenizer
    rm.tokenizer = tok
    rm.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False)
    rm._configure_replacement_model(load_transcoders(args.transcoders, ln2))
    rm.zero_positions = slice(0, 0)  # uncover has no BOS position to leave out
    ids = torch.tensor([int(t) for t in args.tokens.split(",")])
    if int(ids[0]) not in tok.all_special_ids:  # circuit-tracer would prepend one: the inputs would differ
        raise SystemExit(f"the tokens must start with a special token (one of {tok.all_special_ids}), as "
                         "circuit-tracer prepends one otherwise")
    seconds = []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        g = attribute(ids, rm, attribution_targets=torch.tensor([args.target]), batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes, update_interval=args.update_interval)
        seconds.append((time.perf_counter() - t0, time.process_time() - c0))
    feats = g.active_features[g.selected_features]  # [n, 3]: layer, pos, feature
    ids_out = [f"{int(la)}_{int(f)}_{int(pos)}" for la, pos, f in feats.tolist()]
    n_layers, n_pos = cfg.n_layers, len(ids)
    ids_out += [f"{la}_error_{pos}" for la in range(n_layers) for pos in range(n_pos)]
    ids_out += [f"E_{int(t)}_{pos}" for pos, t in enumerate(ids.tolist())]
    ids_out += [f"{n_layers + 1}_{int(t)}_{n_pos - 1}" for t in g.logit_targets_indices()] \
        if hasattr(g, "logit_targets_indices") else [f"{n_layers + 1}_{args.target}_{n_pos - 1}"]
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"adjacency": g.adjacency_matrix.float().contiguous(),
               "activations": g.activation_values[g.selected_features].float().contiguous(),
               "logit_probabilities": g.logit_probabilities.float().reshape(-1).contiguous()},
              str(args.out / "ct_graph.safetensors"))
    (args.out / "ct_graph.json").write_text(json.dumps({
        "node_ids": ids_out, "n_active": int(len(g.active_features)), "seconds": seconds,
        "circuit_tracer": getattr(circuit_tracer, "__version__", "0.5.0"), "threads": torch.get_num_threads(),
        "schema": schema}))
    print(json.dumps({"nodes": len(ids_out), "n_active": int(len(g.active_features)), "seconds": seconds}))


if __name__ == "__main__":
    main()
