"""The ``uncover`` command, generated from the operation registry.

Every operation (``uncover list``) is a command whose options come from its config. The
hand-written commands are those no config form expresses: ``models``, ``tour``, ``list``,
``rerun`` and ``compare``.

Usage errors (unknown hook name, model path, a value out of range) exit with code 2 and a
one-line message; any other failure prints one line with a hint to rerun with ``--debug``
(exit 1); ``--json`` prints one JSON document and nothing else on stdout; progress goes to
stderr.
"""

from __future__ import annotations

import sys

import typer

from uncover.cli import models, results, tour
from uncover.cli.generate import add_operations
from uncover.core.errors import UncoverError
from uncover.ops.registry import operations

_LEGACY = {  # hand-written commands of techniques not yet declared as operations (go away as they are declared)
    "dla": "dla:dla", "circuit": "circuit:circuit", "patch": "patch:patch", "path": "path:path",
    "probe": "probe:probe", "ccs": "probe:ccs", "read": "probe:read", "steer": "steer:steer", "grok": "grok:grok",
    "heads": "heads:heads", "trace": "trace:trace", "attribute": "attribute:attribute", "prune": "prune:prune",
    "dola": "dola:dola", "neurons": "neurons:neurons", "knowledge-neurons": "neurons:knowledge_neurons",
    "superposition": "superposition:superposition", "edit": "edit:edit", "memorization": "memorization:app",
    "sae": "sae:app",
}


def _add_legacy(app: typer.Typer, names: set[str]) -> None:
    import importlib

    for name, ref in _LEGACY.items():
        if name in names or any(n.startswith(name + " ") for n in names):
            continue
        module, attr = ref.split(":")
        try:
            obj = getattr(importlib.import_module(f"uncover.cli.{module}"), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


def build_app() -> typer.Typer:
    """The typer application: hand-written commands plus one per operation."""
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        no_args_is_help=True,
        help="uncover: see how a language model works inside, and use it to change the model.",
    )
    app.command("models")(models.models)
    app.command("tour")(tour.tour)
    app.command("list")(results.list_operations)
    app.command("rerun")(results.rerun)
    app.command("compare")(results.compare)
    ops = operations()
    add_operations(app, ops)
    _add_legacy(app, {op.name for op in ops})
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script (``--debug`` anywhere shows tracebacks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        build_app()(args=args, standalone_mode=True)
    except UncoverError as e:
        print(f"uncover: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("uncover: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"uncover: error: {type(e).__name__}: {first} (an unexpected failure; rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
