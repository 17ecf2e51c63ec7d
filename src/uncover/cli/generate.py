"""The CLI, generated from the operation registry: one command per operation.

Options come from the config's fields (:func:`uncover.core.config.fields_of`); every command
shares the same run options (``--model --device --dtype --seed --json --html --result``) and one
table of short flags (:data:`SHORT`). A command builds the config (so bad input is refused
before the model loads), checks its output paths, loads the model, executes the operation and
prints its text (or one JSON document with ``--json``).
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer

from uncover.core.config import SEED_MAX, FieldInfo, _optional, check_writable, fields_of
from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.ops.registry import Operation, execute

#: the one table of short flags, by field name (used where it is unambiguous within a command)
SHORT = {
    "model": "-m", "targets": "-t", "target": "-t", "text": "-t", "layer": "-l", "layers": "-l", "out": "-o",
    "answer": "-a", "wrong": "-w", "data": "-d", "detect": "-d", "feature": "-f", "prompt": "-p",
    "prompts": "-p", "pattern": "-p", "scale": "-s", "sparsity": "-s", "subject": "-s", "neuron": "-n",
    "max_new_tokens": "-n", "features": "-n", "dims": "-m", "receivers": "-r", "edges": "-n",
}

#: help lines of command groups (``"sae train"`` is in the ``sae`` group)
GROUP_HELP = {
    "sae": "Sparse autoencoders: train, evaluate, feature dashboards, SAEBench-style metrics (bench).",
    "memorization": "Memorization: extraction scans and canary training runs.",
}

#: run options shared by every command: (parameter, option, type, default, help)
RUN_OPTIONS = (
    ("model", "--model", str | None, None, "Model: .gguf file, HF directory or hub id (default: embedded)"),
    ("device", "--device", str | None, None, "Device: cpu, cuda, cuda:1, mps (default: cuda if available)"),
    ("dtype", "--dtype", str | None, None, "Model dtype: float32, bfloat16, float16, float64"),
    ("device_map", "--device-map", str | None, None, "Spread a big model over devices through accelerate: auto, "
                                                     "balanced, balanced_low_0, sequential (docs/big-models.md)"),
    ("offload_folder", "--offload-folder", Path | None, None, "Folder for the weights --device-map offloads to "
                                                               "disk"),
    ("seed", "--seed", int | None, None, "Seed Python, NumPy and torch before the run"),
    ("as_json", "--json", bool, False, "Print one JSON document on stdout (progress goes to stderr)"),
    ("html", "--html", Path | None, None, "Write a self-contained HTML report here"),
    ("result_path", "--result", Path | None, None, "Save the result (tensors and provenance) here, for "
                                                     "`uncover rerun` and `uncover compare`"),
)

#: the run options that only mean something to an operation that loads a model
MODEL_OPTIONS = ("model", "device", "dtype", "device_map", "offload_folder")


def split_list(text: str) -> list[str]:
    """``"1,2 3"`` -> ``["1", "2", "3"]``."""
    return [t for t in text.replace(",", " ").split() if t]


def _parser(f: FieldInfo) -> Any:
    """How the CLI text of a list-of-numbers field becomes its value (``None``: typer parses it)."""
    if f.spec.parse is not None:
        return f.spec.parse
    inner, _ = _optional(f.type)
    if get_origin(inner) in (list, tuple):
        (item,) = get_args(inner)[:1] or (str,)
        if item in (int, float):
            def parse(text: str, item: type = item) -> list[Any]:
                from uncover.core.errors import UsageError

                if not split_list(text):
                    raise UsageError(f"{f.option} is empty; give comma-separated {item.__name__}s, e.g. 0,1")
                try:
                    return [item(t) for t in split_list(text)]
                except ValueError:
                    raise UsageError(f"{f.option}: expected comma-separated {item.__name__}s, got {text!r}") from None
            return parse
    return None


def _cli_type(f: FieldInfo) -> Any:
    inner, optional = _optional(f.type)
    if _parser(f) is not None:
        return str | None if optional or not f.required else str
    origin = get_origin(inner)
    if origin is Literal:
        base: Any = type(get_args(inner)[0])
    elif origin in (list, tuple):
        base = list[str]
        return base
    elif origin in (typing.Union, types.UnionType) or inner is Path:
        base = str  # paths reach the config as typed, so "" is refused there (typer would make it ".")
    else:
        base = inner
    return base | None if optional else base


def _short(f: FieldInfo, taken: set[str]) -> list[str]:
    s = SHORT.get(f.name)
    if s is None or s in taken:
        return []
    taken.add(s)
    return [s]


def _cli_default(f: FieldInfo) -> Any:
    if f.required:
        return ...
    d = f.default
    if _parser(f) is not None and isinstance(d, list | tuple):
        return ",".join(str(x) for x in d)
    if isinstance(d, tuple):
        return list(d)
    return d


def _typer_param(f: FieldInfo, taken: set[str]) -> Any:
    choices = get_args(_optional(f.type)[0]) if get_origin(_optional(f.type)[0]) is Literal else ()
    help_ = f.spec.help + (f" (one of: {', '.join(map(str, choices))})" if choices else "")
    if f.spec.positional:
        return typer.Argument(_cli_default(f), help=help_, show_default=not f.required)
    return typer.Option(_cli_default(f), f.option, *_short(f, taken), help=help_)


def build_config(op: Operation, values: dict[str, Any]) -> Any:
    """The operation's config from parsed CLI values (list fields' text parsed first)."""
    kw = {}
    for f in fields_of(op.config):
        if not f.spec.cli or f.name not in values:
            continue
        v = values[f.name]
        parse = _parser(f)
        if parse is not None and isinstance(v, str):
            v = parse(v)
        kw[f.name] = v
    return op.config(**kw)


def example_command(op: Operation) -> str:
    """The operation's example as a command line.

    >>> from uncover.ops.registry import get_operation
    >>> example_command(get_operation("lens"))
    "uncover lens 'The Eiffel Tower is in the city of' --target ' Paris'"
    """
    import shlex

    words = ["uncover", *op.name.split()]
    ex = op.example or {}
    for f in sorted(fields_of(op.config), key=lambda f: not f.spec.positional):
        if f.name not in ex or not f.spec.cli:
            continue
        v = ex[f.name]
        if f.spec.positional:
            words += [shlex.quote(str(x)) for x in (v if isinstance(v, list | tuple) else [v])]
        elif isinstance(v, bool):
            words += [f.option] if v else []
        elif isinstance(v, list | tuple) and _parser(f) is None:
            for x in v:
                words += [f.option, shlex.quote(str(x))]
        elif isinstance(v, list | tuple):
            words += [f.option, ",".join(str(x) for x in v)]
        elif v is not None:
            words += [f.option, shlex.quote(str(v))]
    return " ".join(words)


def command(op: Operation) -> Any:
    """A typer command function for ``op``."""
    fields = [f for f in fields_of(op.config) if f.spec.cli]
    taken: set[str] = set()
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_typer_param(f, taken),
                                annotation=_cli_type(f)) for f in sorted(fields, key=lambda f: not f.spec.positional)]
    names = {f.name for f in fields}
    for pname, flag, tp, default, help_ in RUN_OPTIONS:
        if pname in names or (pname in MODEL_OPTIONS and not op.needs_model):
            continue
        short = [SHORT[pname]] if pname in SHORT and SHORT[pname] not in taken else []
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Option(default, flag, *short, help=help_), annotation=tp))

    def cmd(**values: Any) -> None:
        run_command(op, values)

    cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cmd.__doc__ = op.help
    cmd.__name__ = op.name.replace(" ", "_").replace("-", "_")
    return cmd


def run_command(op: Operation, values: dict[str, Any]) -> None:
    """Config, output checks, model, execute, output: the body of every generated command."""
    from uncover.cli.common import emit, load_model

    config = build_config(op, values)
    if op.needs_model:  # a device or dtype this machine cannot use is refused before the model loads
        from uncover.models.load import _dtype, check_device

        check_device(values.get("device"))
        _dtype(values.get("dtype"))
    if values.get("seed") is not None and not 0 <= values["seed"] <= SEED_MAX:
        raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {values['seed']}")
    html, result_path = values.get("html"), values.get("result_path")
    if html is not None:
        check_writable(html, what="--html")
    if result_path is not None:
        check_writable(result_path, what="--result")
    model = None
    if op.needs_model:
        name = values.get("model")
        named = config.model_source()
        if named is not None and name is not None and name != named:
            raise UsageError(f"the base model is given twice: {named!r} (argument) and --model {name!r}; give one")
        model = load_model(named or name, device=values.get("device"), dtype=values.get("dtype"),
                           device_map=values.get("device_map"), offload_folder=values.get("offload_folder"))
    seed = values.get("seed") if "seed" not in {f.name for f in fields_of(op.config)} else None
    result = execute(op, config, model, progress=Progress(enabled=True), seed=seed)
    if result_path is not None:
        result.save(result_path)
        print(f"uncover: saved the result to {Path(result_path).resolve()}", file=sys.stderr)
    emit(result, bool(values.get("as_json")), html)


def add_operations(app: typer.Typer, ops: list[Operation]) -> None:
    """Add one command per operation; ``"sae train"`` goes into the ``sae`` group."""
    groups: dict[str, typer.Typer] = {}
    for op in ops:
        group, _, leaf = op.name.rpartition(" ")
        target = app
        if group:
            if group not in groups:
                groups[group] = typer.Typer(no_args_is_help=True, help=GROUP_HELP.get(group, f"{group} operations"))
                app.add_typer(groups[group], name=group)
            target = groups[group]
        epilog = f"Example: {example_command(op)}" if op.example is not None else None
        target.command(leaf, help=op.help, epilog=epilog)(command(op))
