"""Configs shared by the pair-based operations (``patch``, ``attribute``, ``path``, ``circuit``).

:class:`PairConfig` declares once the clean/corrupt prompt pair, its answer and wrong token and
the ``--task`` alternative, with their checks: the answer differs from the wrong token, either a
task or all four parts, and (after the model loads) one token each for answer and wrong and an
equal token count for clean and corrupt. Subclasses narrow ``task`` to the tasks they support by
redeclaring the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args, get_origin

from uncover.core.config import Config, _optional, fields_of, param
from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

Task = Literal["ioi", "facts", "greater_than"]
"""The tasks of :data:`uncover.data.tasks.TASKS`."""


def choices_of(tp: object) -> tuple:
    """The choices of a ``Literal`` type (or of ``Literal | None``); ``()`` for other types.

    >>> choices_of(Literal["a", "b"] | None)
    ('a', 'b')
    """
    inner, _ = _optional(tp)
    return get_args(inner) if get_origin(inner) is Literal else ()


@dataclass(frozen=True)
class PairConfig(Config):
    """One clean/corrupt pair, given explicitly or taken from a task.

    Either ``task`` or all four of ``clean``, ``corrupt``, ``answer`` and ``wrong``, not both
    (unless :attr:`explicit_wins`, for configs whose ``task`` has a default).

    >>> PairConfig(clean="a b", corrupt="a c", answer=" x", wrong=" y").explicit
    True
    >>> PairConfig(clean="a b", answer=" x")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: PairConfig: missing --corrupt, --wrong (or give --task)
    """

    clean: str | None = param(None, help="Clean prompt", nonempty=True)
    corrupt: str | None = param(None, help="Corrupt prompt (same token count)", nonempty=True)
    answer: str | None = param(None, help="The clean answer token (one token, mind the leading space)",
                               unit="token")
    wrong: str | None = param(None, help="The competing token (one token)", unit="token")
    task: Task | None = param(None, help="Take the first pair of a task that the model gets right")

    #: an explicit pair overrides ``task`` (``task`` has a default) instead of conflicting with it
    explicit_wins: ClassVar[bool] = False
    #: clean and corrupt must have the same number of tokens
    same_length: ClassVar[bool] = True

    _PARTS: ClassVar[tuple[str, ...]] = ("clean", "corrupt", "answer", "wrong")

    @property
    def explicit(self) -> bool:
        """Whether the pair is given explicitly (else it comes from :attr:`task`)."""
        return any(getattr(self, k) is not None for k in self._PARTS)

    def _option(self, name: str) -> str:
        return next(f.option for f in fields_of(type(self)) if f.name == name)

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        for name in ("answer", "wrong"):
            if getattr(self, name) == "":
                raise UsageError(f"{owner}: {self._option(name)} is empty; give one token (e.g. ' Mary')")
        if self.explicit:
            missing = [self._option(k) for k in self._PARTS if getattr(self, k) is None]
            if self.task is not None and not self.explicit_wins:
                raise UsageError(f"{owner}: give either --task or the pair (--clean, --corrupt, --answer, --wrong), "
                                 "not both")
            if missing:
                hint = "or leave all four out and use --task" if self.explicit_wins else "or give --task"
                raise UsageError(f"{owner}: missing {', '.join(missing)} ({hint})")
            if self.answer == self.wrong:
                raise UsageError(f"{owner}: answer and wrong are the same token {self.answer!r}; the comparison "
                                 "needs two different tokens")
        elif self.task is None:
            raise UsageError(f"{owner}: missing --clean, --corrupt, --answer, --wrong (or give --task)")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if self.explicit and self.same_length:
            n_clean, n_corrupt = len(model.to_tokens(self.clean)[0]), len(model.to_tokens(self.corrupt)[0])
            if n_clean != n_corrupt:
                raise UsageError(f"{type(self).__name__}: clean has {n_clean} tokens but corrupt has {n_corrupt}; "
                                 "patching needs equal lengths (the same token count)")

    def pair(self, model: HookedModel) -> tuple[str, str, str, str]:
        """``(clean, corrupt, answer, wrong)``: the explicit pair, or the first of :attr:`task` the model gets right.

        >>> PairConfig(task="facts").pair(model)[2:]
        (' Paris', ' Rome')
        """
        from uncover.data.tasks import task_pair

        if self.explicit:
            return self.clean, self.corrupt, self.answer, self.wrong  # type: ignore[return-value]
        return task_pair(model, self.task)
