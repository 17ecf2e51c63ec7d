"""The ``uncover`` command: ``models``, ``lens``, ``dla``, ``patch``, ``path``, ``tour``, ``grok``, ``heads``,
``trace``, ``attribute``, ``memorization``, ``prune``, ``dola``, ``circuit``, ``probe``, ``ccs``,
``read``, ``steer``, ``edit``, ``neurons``, ``knowledge-neurons``, ``sae train|eval|show``, ``superposition``.

Usage errors (unknown hook name, model path, a token that is not one token) exit with
code 2 and a one-line message; ``--json`` prints one JSON document and nothing else on
stdout; progress goes to stderr.
"""

from __future__ import annotations

import sys

import typer

from uncover.cli import attribute as attribute_cli
from uncover.cli import circuit as circuit_cli
from uncover.cli import dla, lens, models, patch, tour
from uncover.cli import dola as dola_cli
from uncover.cli import edit as edit_cli
from uncover.cli import grok as grok_cli
from uncover.cli import heads as heads_cli
from uncover.cli import memorization as memorization_cli
from uncover.cli import neurons as neurons_cli
from uncover.cli import path as path_cli
from uncover.cli import probe as probe_cli
from uncover.cli import prune as prune_cli
from uncover.cli import sae as sae_cli
from uncover.cli import steer as steer_cli
from uncover.cli import superposition as superposition_cli
from uncover.cli import trace as trace_cli
from uncover.core.errors import UncoverError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="uncover: see how a language model works inside, and use it to change the model.",
)
app.command("models")(models.models)
app.command("lens")(lens.lens)
app.command("train-lens")(lens.train_lens)
app.command("dla")(dla.dla)
app.command("circuit")(circuit_cli.circuit)
app.command("patch")(patch.patch)
app.command("path")(path_cli.path)
app.command("tour")(tour.tour)
app.command("probe")(probe_cli.probe)
app.command("ccs")(probe_cli.ccs)
app.command("read")(probe_cli.read)
app.command("steer")(steer_cli.steer)
app.command("grok")(grok_cli.grok)
app.add_typer(memorization_cli.app, name="memorization")
app.command("heads")(heads_cli.heads)
app.command("trace")(trace_cli.trace)
app.command("attribute")(attribute_cli.attribute)
app.command("prune")(prune_cli.prune)
app.command("dola")(dola_cli.dola)
app.command("neurons")(neurons_cli.neurons)
app.command("knowledge-neurons")(neurons_cli.knowledge_neurons)
app.add_typer(sae_cli.app, name="sae")
app.command("superposition")(superposition_cli.superposition)
app.command("edit")(edit_cli.edit)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except UncoverError as e:
        print(f"uncover: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
