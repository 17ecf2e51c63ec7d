"""Training dynamics: grokking (Power et al. 2022; Nanda et al. 2023) and memorization
(Tirumala et al. 2022; Carlini et al. 2023).

Subpackages train small standard Hugging Face models from scratch on CPU and measure what
happens inside them over training; every uncover technique runs on the trained models
through :class:`~uncover.hooks.hooked.HookedModel`.
"""
