"""uncover: see how a language model works inside, and use it to change the model.

>>> import uncover
>>> model = uncover.load()  # doctest: +SKIP
"""

from uncover.hooks.hooked import HookedModel
from uncover.hooks.interventions import Ablate, Add, Intervention, Mean, Project, Replace, Zero
from uncover.models.load import load

__all__ = ["HookedModel", "load", "Intervention", "Zero", "Mean", "Replace", "Add", "Project", "Ablate"]
__version__ = "0.1.0"
