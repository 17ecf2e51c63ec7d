"""Registry of architecture families: one small declarative file each."""

from __future__ import annotations

from uncover.core.errors import UnsupportedModel
from uncover.models.adapter import Family
from uncover.models.families.gemma import GEMMA, GEMMA2, GEMMA3
from uncover.models.families.gpt2 import GPT2
from uncover.models.families.gpt_neox import GPT_NEOX
from uncover.models.families.llama import LLAMA, QWEN3

FAMILIES: tuple[Family, ...] = (LLAMA, QWEN3, GEMMA, GEMMA2, GEMMA3, GPT2, GPT_NEOX)


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
    """
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    raise UnsupportedModel(
        f"no adapter for architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
    )
