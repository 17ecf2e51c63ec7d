"""Registry of architecture families: one small declarative file each."""

from __future__ import annotations

from uncover.core.errors import UnsupportedModel
from uncover.models.adapter import Family
from uncover.models.families.bloom import BLOOM
from uncover.models.families.cohere import COHERE
from uncover.models.families.falcon import FALCON
from uncover.models.families.gemma import GEMMA, GEMMA2, GEMMA3
from uncover.models.families.glm import GLM4
from uncover.models.families.gpt2 import GPT2
from uncover.models.families.gpt_bigcode import GPT_BIGCODE
from uncover.models.families.gpt_neox import GPT_NEOX
from uncover.models.families.gpt_oss import GPT_OSS
from uncover.models.families.gptj import GPTJ
from uncover.models.families.granite import GRANITE
from uncover.models.families.layernorm_llama import OLMO, STABLELM, STARCODER2
from uncover.models.families.llama import LLAMA, QWEN3
from uncover.models.families.moe import MIXTRAL, QWEN2_MOE, QWEN3_MOE
from uncover.models.families.olmo2 import OLMO2
from uncover.models.families.opt import OPT
from uncover.models.families.phi import PHI, PHI3

FAMILIES: tuple[Family, ...] = (LLAMA, QWEN3, GEMMA, GEMMA2, GEMMA3, GPT2, GPT_NEOX, PHI, PHI3, OLMO, STABLELM,
                                STARCODER2, GPTJ, GPT_BIGCODE, FALCON, GLM4, OPT, MIXTRAL, QWEN2_MOE,
                                QWEN3_MOE, GPT_OSS, OLMO2, COHERE, GRANITE, BLOOM)

REFUSED: dict[str, str] = {
    "deepseek_v3": "multi-head latent attention (low-rank keys and values with a decoupled rotary part) "
                   "and grouped expert routing (not implemented)",
}
"""Architectures refused on purpose, with the reason (shown by :func:`family_for`)."""


def supported_model_types() -> list[str]:
    """All HF ``model_type`` values an adapter exists for.

    >>> "llama" in supported_model_types()
    True
    """
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> Family:
    """The family handling ``model_type``; raises ``UnsupportedModel`` naming the valid ones.

    >>> family_for("qwen2").name
    'llama'
    >>> family_for("deepseek_v3")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UnsupportedModel: architecture 'deepseek_v3' is not supported: multi-head latent ...
    """
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    if model_type in REFUSED:
        raise UnsupportedModel(f"architecture {model_type!r} is not supported: {REFUSED[model_type]}; "
                               f"supported: {', '.join(supported_model_types())}")
    raise UnsupportedModel(
        f"no adapter for architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
    )
