"""The ``uncover`` command, generated from the operation registry.

Every operation (``uncover list``) is a command whose options come from its config. The
hand-written commands are those no config form expresses: ``models``, ``tour``, ``list``,
``rerun``, ``compare`` and ``serve`` (the web workbench).

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


def serve(
    model: str | None = typer.Option(None, "--model", "-m", help="Model to load (default: the embedded one)"),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (anything but loopback prints a warning)"),
    results: str = typer.Option("uncover-results", "--results", help="The server's results folder (created)"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, mps (default: best available)"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 (default: the model's)"),
) -> None:
    """Serve the local web workbench: every operation in a browser; prints the URL (it carries a token)."""
    try:
        from uncover.serve import serve as serve_
    except ImportError as e:
        raise UncoverError(f"uncover serve needs the web extra ({e.name} is missing): pip install 'uncover[web]'") \
            from None
    serve_(model, host=host, port=port, results=results, device=device, dtype=dtype)


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
    app.command("serve")(serve)
    add_operations(app, operations())
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script (``--debug`` anywhere shows tracebacks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = build_app()(args=args, prog_name="uncover", standalone_mode=False)
    except typer.TyperException as e:  # the command line itself: unknown option, a number that is not one ...
        raise SystemExit(_command_line_error(e)) from None
    except UncoverError as e:
        print(f"uncover: error: {one_line(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("uncover: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        from uncover.core.memory import out_of_memory

        oom = out_of_memory(e)  # a size the estimates let through: still a usage error, with the fix
        if oom is not None:
            print(f"uncover: error: {oom}", file=sys.stderr)
            raise SystemExit(2) from None
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"uncover: error: {type(e).__name__}: {first} (an unexpected failure; rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def one_line(message: str, limit: int = 400) -> str:
    """An error message as one readable line: newlines folded, long echoed values (a 5,000-character
    prompt, a list of 150 tokens) cut in the middle, the whole at most ``limit`` characters with its end
    (where the fix is) kept.

    >>> one_line("'" + "x" * 500 + "' is 125 tokens, not one")
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...(443 more)...xxxxxxxxxxxxxxxxxx' is 125 tokens, not one"
    """
    import re

    text = " ".join(message.split())
    text = re.sub(r"\[[^\[\]]{120,}\]", lambda m: m.group(0)[:60] + " ...]", text)
    text = " ".join(w if len(w) <= 80 else f"{w[:40]}...({len(w) - 59} more)...{w[-19:]}" for w in text.split(" "))
    return text if len(text) <= limit else text[: limit - 150] + " ... " + text[-145:]


def _command_line_error(e: typer.TyperException) -> int:
    """Print a command-line parsing error (click's) as one ``uncover: error:`` line; return the exit code.

    Without arguments a group prints its help, which is all it says (typer's own behaviour).
    """
    if type(e).__name__ == "NoArgsIsHelpError":
        return int(getattr(e, "exit_code", 2))
    if type(e).__name__ == "Abort":
        print("uncover: aborted", file=sys.stderr)
        return 1
    message = one_line(e.format_message() if hasattr(e, "format_message") else str(e))
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"uncover: error: {where}{message}{hint}", file=sys.stderr)
    return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    main()
