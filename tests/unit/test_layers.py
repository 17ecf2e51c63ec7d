"""The import layering of ``src/uncover``, read from the source with ``ast`` so that no import hides a cycle.

Every import of ``uncover`` counts: at module level and inside functions (lazy imports), ``import_module`` with
a literal name too. Imports under ``if TYPE_CHECKING:`` never run and do not count; examples in docstrings are
text, not code. Layers, bottom up (docs/design/architecture.md):

    core < models < hooks < data < techniques < operations < report < uncover (the facade) < cli

The operations layer is ``ops/`` plus each technique's ``ops.py`` (its declarations): they import the registry
to declare themselves, and the registry loads them by name (``CATALOG``), not by an import statement. A module
imports its own layer's package and any lower layer; a technique imports another technique only for the pairs
in :data:`TECHNIQUE_USES`, and only public names. The module graph has no cycle at all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "uncover"

TECHNIQUES = ("lenses", "attribution", "patching", "circuits", "heads", "neurons", "sae", "probing", "steering",
              "editing", "pruning", "decoding", "dynamics", "transcoders", "graphs", "diffing", "autointerp",
              "saebench")
#: ``scale`` (shards, manifests, engines) sits on ``data`` (it streams corpora and reads fact sets) and under the
#: techniques, which read its shards; ``serve`` (the web workbench) sits on the facade, under the CLI that starts it
RANK = {"core": 0, "models": 1, "hooks": 2, "data": 3, "scale": 3.5, **dict.fromkeys(TECHNIQUES, 4), "ops": 5,
        "report": 6, "uncover": 7, "serve": 7.5, "cli": 8}

#: technique -> technique imports that are part of the design: (importer, imported) -> why
TECHNIQUE_USES = {
    ("attribution", "patching"): "attribution patching estimates activation patching: same sites, pair checks "
                                 "and result type (a PatchResult)",
    ("editing", "neurons"): "knowledge-neuron edits locate their neurons with knowledge_neurons",
    ("editing", "patching"): "ROME picks its layer with causal_trace when none is given",
    ("steering", "probing"): "reading vectors and ITI fit and cross-validate probes",
    ("transcoders", "sae"): "transcoders train with the SAE trainer and its activation sources, and key their "
                            "quick set by the SAE's model fingerprint",
    ("graphs", "transcoders"): "attribution graphs replace the MLPs with transcoder features",
    ("saebench", "probing"): "sparse probing and the first-letter probes of absorption fit logistic probes",
    ("saebench", "sae"): "the core metrics (L0, dead/dense latents, loss recovered) are evaluate_sae's",
    ("diffing", "sae"): "crosscoders are SAEs on paired activations: the SAE trainer, store and SAE features",
    ("diffing", "patching"): "a diff puts the causal traces of both models side by side",
    ("diffing", "steering"): "a steered model's diff reads the saved steering vector",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def area(module: str) -> str:
    """The layer-bearing part of a module name: its package, ``ops`` for a technique's declarations."""
    parts = module.split(".")
    if len(parts) == 1:
        return "uncover"
    if parts[1] in (*TECHNIQUES, "scale") and parts[2:3] == ["ops"]:
        return "ops"
    return parts[1]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(module: str) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` for every runtime import of ``uncover`` in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: str) -> Iterator[tuple[int, str, list[str]]]:
    """:func:`imports` of a module's ``source``; ``package`` resolves relative imports."""
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "uncover":
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "uncover":
                continue
            names = [a.name for a in node.names]
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            yield from ((node.lineno, s, []) for s in subs)
            if len(subs) < len(names):
                yield node.lineno, base, [n for n in names if f"{base}.{n}" not in MODULES]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) ==
              "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            if str(node.args[0].value).split(".")[0] == "uncover":
                yield node.lineno, str(node.args[0].value), []


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SRC.parent)}:{line}"


def test_every_package_has_a_layer():
    assert {area(m) for m in MODULES} <= set(RANK), sorted({area(m) for m in MODULES} - set(RANK))


def test_imports_go_down_the_layers():
    bad = []
    for module in MODULES:
        a = area(module)
        for line, target, _ in imports(module):
            b = area(target)
            if a != b and RANK[b] >= RANK[a] and (a, b) not in TECHNIQUE_USES:
                bad.append(f"{_where(module, line)}: {a} imports {target} ({b})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_techniques_use_each_other_only_through_public_names():
    bad = []
    for module in MODULES:
        for line, target, names in imports(module):
            pair = (area(module), area(target))
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if pair in TECHNIQUE_USES and private:
                bad.append(f"{_where(module, line)}: {', '.join(private)} from {target}")
    assert not bad, "private names used across techniques:\n" + "\n".join(bad)


def test_noted_technique_uses_exist():
    used = {(area(m), area(t)) for m in MODULES for _, t, _ in imports(m)}
    assert set(TECHNIQUE_USES) <= used, f"stale entries: {sorted(set(TECHNIQUE_USES) - used)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph = {m: {t for _, t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    assert not _cycles(graph)


def test_cycle_finder_finds_hidden_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_figures_are_leaves():
    """A result's ``plot`` imports its figure lazily; figures modules import nothing of their package at run time."""
    bad = [f"{_where(m, line)}: {t}" for m in MODULES if m.endswith(".figures") for line, t, _ in imports(m)
           if t.startswith(m.rpartition(".")[0] + ".")]
    assert not bad, bad


def test_function_level_imports_are_seen():
    source = '''
"""Doc text is not code:

>>> from uncover.report.html import write_reports
"""
from typing import TYPE_CHECKING

from uncover.core import names
from . import results

if TYPE_CHECKING:
    from uncover.ops.registry import Operation


def f():
    import uncover.patching.path
    from uncover.core.persist import load_result

    return importlib.import_module("uncover.report.tour")
'''
    found = sorted((t, tuple(n)) for _, t, n in imports_in(source, "uncover.core"))
    assert found == [("uncover.core.names", ()), ("uncover.core.persist", ("load_result",)),
                     ("uncover.core.results", ()), ("uncover.patching.path", ()), ("uncover.report.tour", ())]
