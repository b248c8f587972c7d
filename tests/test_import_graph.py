"""The project's import graph, checked against its layers.

The graph is read from the source with `ast` (nothing is imported). The layers:

    distractors  <  sacae_deploy (the runtime)  <  train  <  export  <  the CLI (sacae_deploy.cli, .commands)

A layer imports only the layers below it; of the CLI, only the commands that exist to call training
and export (`sacae_deploy/commands/{train,export,demo,sweep}.py`) import `train` or `export`.
Imports count wherever they are written (inside functions and TYPE_CHECKING blocks too): a lazy
import is still a dependency. No module imports itself back through others, and no layer does.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("distractors", "sacae_deploy", "train", "export")
CLI_CALLERS = {f"sacae_deploy.commands.{name}" for name in ("train", "export", "demo", "sweep")}
LAYERS = ("distractors", "runtime", "train", "export", "cli")  # each may import only those before it
# Known cycles, each by the edge that closes it (a lazy import), left out of the cycle check until
# it is untangled; an entry whose import is gone fails `test_known_cycles_are_still_there`.
KNOWN_BACK_EDGES = {
    ("export.precision", "export.gate"): "gate.py imports Inputs and recording_policy from precision.py, "
                                         "precision.py imports run_gate inside a function",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=1)
def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> dict[str, int]:
    """Project modules `name` imports (at any depth in the file), each with the line of its first
    import; `modules` (the existing ones) tells `from package import module` from `from module import name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:  # a project import counts even if no such module exists
        if target.split(".")[0] in PACKAGES and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports pkg.module; else pkg itself
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node.lineno)
    return found


def layer(name: str) -> str:
    if name == "sacae_deploy.cli" or name.startswith("sacae_deploy.commands"):
        return "cli"
    top = name.split(".")[0]
    return "runtime" if top == "sacae_deploy" else top


def graph() -> dict[str, dict[str, int]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(edges[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def layer_violations(imports: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for name, targets in sorted(imports.items()):
        for target, line in sorted(targets.items()):
            mine, theirs = layer(name), layer(target)
            upward = LAYERS.index(theirs) > LAYERS.index(mine)
            cli_reach = mine == "cli" and theirs in ("train", "export") and name not in CLI_CALLERS
            if upward or cli_reach:
                why = (f"only {', '.join(sorted(CLI_CALLERS))} call into {theirs}" if cli_reach
                       else f"the {mine} layer imports the {theirs} layer above it")
                bad.append(f"{imports_path(name)}:{line} imports {target} ({why})")
    return bad


def imports_path(name: str) -> str:
    return str(project_modules()[name].relative_to(ROOT))


def test_the_graph_sees_the_project() -> None:
    imports = graph()
    assert "sacae_deploy.sim.envs" in imports and "sacae_deploy.commands.common" in imports
    assert "sacae_deploy.sim.envs" in imports["sacae_deploy.sources"]  # a lazy import, inside a method
    assert "sacae_deploy.sim.rendering" in imports["sacae_deploy.sim.envs"]


def test_layers_import_only_downwards() -> None:
    bad = layer_violations(graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_module_import_cycle() -> None:
    edges = {name: set(targets) for name, targets in graph().items()}
    for source, target in KNOWN_BACK_EDGES:
        edges[source].discard(target)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_known_cycles_are_still_there() -> None:
    imports = graph()
    gone = [f"{a} -> {b}" for a, b in KNOWN_BACK_EDGES if b not in imports.get(a, {})]
    assert not gone, f"no longer imported, remove from KNOWN_BACK_EDGES: {', '.join(gone)}"


def test_no_layer_import_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for name, targets in graph().items():
        edges.setdefault(layer(name), set()).update(layer(t) for t in targets if layer(t) != layer(name))
    cycle = find_cycle(edges)
    assert cycle is None, "layers import each other: " + " -> ".join(cycle or [])


def test_the_checks_catch_what_they_are_for() -> None:
    """A runtime module importing training code, and two modules importing each other, are reported."""
    imports = graph()
    imports["sacae_deploy.sources"]["train.envs"] = 182  # e.g. `from train.envs import DMCEnv` put back
    assert layer_violations(imports) == ["sacae_deploy/sources.py:182 imports train.envs "
                                         "(the runtime layer imports the train layer above it)"]
    edges = {name: set(targets) for name, targets in imports.items()}
    edges["sacae_deploy.contract"].add("sacae_deploy.policy")
    cycle = find_cycle(edges)
    assert cycle is not None and {"sacae_deploy.contract", "sacae_deploy.policy"} <= set(cycle)


@pytest.mark.parametrize("source, target", [
    ("from train.envs import make_env", "train.envs"),
    ("from .frames import check_frame", "distractors.frames"),
    ("from sacae_deploy import contract", "sacae_deploy.contract"),
    ("import export.graphs as g", "export.graphs"),
])
def test_imports_are_resolved(tmp_path: Path, source: str, target: str) -> None:
    path = tmp_path / "composite.py"
    path.write_text(f"def f():\n    {source}\n")
    assert imports_of("distractors.composite", path, set(project_modules())) == {target: 2}
