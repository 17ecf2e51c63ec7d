"""uncover: see how a language model works inside, and use it to change the model.

``import uncover as uc`` reaches everything: the model (``uc.load``, ``uc.HookedModel``,
``uc.ActivationCache``), the interventions (``uc.Zero``, ``uc.Replace`` ...), every technique
by its function (``uc.logit_lens``, ``uc.activation_patching``, ``uc.rome`` ...) or through its
package (``uc.patching.activation_patching``), and the operation layer: ``uc.operations()``,
``uc.run(name, model, **config)`` (validated config, result with provenance), ``uc.load_result``,
``uc.rerun`` and ``uc.compare``. Technique modules load on first use.

>>> import uncover as uc
>>> r = uc.logit_lens(model, "The Eiffel Tower is in the city of", targets=[" Paris"])
>>> r.target_ranks[0, -1, -1, 0].item()
0
"""

from __future__ import annotations

import importlib
from typing import Any

from uncover.core.persist import load_result
from uncover.core.results import Result
from uncover.core.version import __version__ as __version__
from uncover.hooks.cache import ActivationCache
from uncover.hooks.hooked import HookedModel, load
from uncover.hooks.interventions import Ablate, Add, Intervention, Mean, Project, Replace, Zero
from uncover.ops.registry import execute, get_operation, operations, run

#: technique packages, reachable as ``uc.<package>``
PACKAGES = ("attribution", "circuits", "data", "decoding", "dynamics", "editing", "heads", "hooks", "lenses",
            "models", "neurons", "ops", "patching", "probing", "pruning", "report", "sae", "steering",
            "transcoders", "graphs")

#: public functions and classes, reachable as ``uc.<name>`` (module, attribute)
API = {
    # lenses and attribution
    "logit_lens": "lenses.logit_lens", "tuned_lens": "lenses.tuned_lens", "train_tuned_lens": "lenses.tuned_lens_train",
    "TunedLens": "lenses.tuned_lens", "direct_logit_attribution": "attribution.dla",
    "attribution_patching": "attribution.attribution_patching",
    "compare_attribution": "attribution.attribution_patching",
    # patching and circuits
    "activation_patching": "patching.activation", "path_patching": "patching.path",
    "causal_trace": "patching.causal_tracing", "trace_facts": "patching.trace_facts", "eap": "circuits.eap",
    "acdc": "circuits.acdc", "faithfulness": "circuits.faithfulness",
    "faithfulness_curve": "circuits.faithfulness",
    # heads
    "head_scores": "heads.detectors", "induction_loss": "heads.induction",
    "attention_patterns": "heads.patterns", "composition_scores": "heads.composition",
    "ov_circuit": "heads.circuits", "qk_circuit": "heads.circuits", "copying_scores": "heads.detectors",
    # neurons and SAEs
    "top_activations": "neurons.top", "neuron_logits": "neurons.kv", "knowledge_neurons": "neurons.knowledge",
    "knowledge_effect": "neurons.knowledge", "ablate_neurons": "neurons.ablation",
    "train_toy_models": "neurons.superposition", "SAE": "sae.base", "SAEConfig": "sae.base",
    "train_sae": "sae.train", "evaluate_sae": "sae.evaluate", "feature_dashboard": "sae.dashboard",
    "attach_sae": "sae.attach", "quick_sae": "sae.quick",
    # transcoders and attribution graphs
    "Transcoder": "transcoders.base", "CrossLayerTranscoder": "transcoders.clt", "TranscoderSet": "transcoders.sets",
    "train_transcoders": "transcoders.train", "evaluate_transcoders": "transcoders.evaluate",
    "quick_transcoders": "transcoders.quick", "attribution_graph": "graphs.attribute",
    "feature_effects": "graphs.validate",
    # auto-interpretability and SAE metrics
    "explain_features": "autointerp.explain", "FeatureSource": "autointerp.sources",
    "neuron_source": "autointerp.sources", "sae_source": "autointerp.sources", "sae_bench": "saebench.bench",
    # representations
    "probe_layers": "probing.layers", "fit_probe": "probing.linear", "ccs_layers": "probing.ccs",
    "fit_ccs": "probing.ccs", "reading_vectors": "steering.reading", "actadd": "steering.methods",
    "caa": "steering.methods", "mean_difference": "steering.methods", "fit_iti": "steering.iti",
    "generate": "steering.methods", "sweep": "steering.sweep", "SteeringVector": "steering.vectors",
    # editing, pruning, decoding
    "edit": "editing", "rome": "editing.rome", "memit": "editing.memit", "kn_edit": "editing.kn",
    "evaluate_edits": "editing.evaluate", "prune": "pruning", "magnitude_prune": "pruning.magnitude",
    "wanda_prune": "pruning.wanda", "sparsegpt_prune": "pruning.sparsegpt",
    "prune_structured": "pruning.structured", "perplexity": "pruning.evaluate", "dola_generate": "decoding.dola",
    "compare_decoding": "decoding.compare",
    # training dynamics
    "GrokConfig": "dynamics.grokking", "MemConfig": "dynamics.memorization",
    "train_memorization": "dynamics.memorization", "extraction_scan": "dynamics.memorization",
    # model diffing
    "Crosscoder": "diffing.crosscoder", "train_crosscoder": "diffing.analysis",
    "analyse_crosscoder": "diffing.analysis", "model_diff": "diffing.diff",
    # data
    "ioi": "data.tasks", "facts": "data.tasks", "greater_than": "data.tasks", "repeated_tokens": "data.tasks",
    # dataset scale: corpora, shards with a manifest, engines
    "Corpus": "scale.corpora", "harvest_corpus": "scale.harvest", "ShardReader": "scale.reader",
    "ShardSource": "scale.reader", "top_contexts": "scale.reader", "make_engine": "scale.engines",
    # results
    "rerun": "ops.reproduce", "compare": "ops.reproduce", "Provenance": "core.provenance",
}

__all__ = ["ActivationCache", "Ablate", "Add", "HookedModel", "Intervention", "Mean", "Project", "Replace", "Result",
           "Zero", "execute", "get_operation", "load", "load_result", "operations", "run", *sorted(API)]


def __getattr__(name: str) -> Any:
    if name in API:
        value = getattr(importlib.import_module(f"uncover.{API[name]}"), name)
        globals()[name] = value
        return value
    if name in PACKAGES:
        return importlib.import_module(f"uncover.{name}")
    raise AttributeError(f"module 'uncover' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API) | set(PACKAGES))
