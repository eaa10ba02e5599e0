"""The layout docs/design.md describes, checked: imports flow one way, no cycles, no module grows past a reader's reach.

The import graph is read with `ast` from the sources (module-level and function-level imports alike: a lazy import
is still a dependency), so these tests need nothing installed beyond the standard library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "synthembed"

# The flat core: every stage may use it; it uses nothing above it.
CORE = {
    "config_overrides", "data", "errors", "files", "languages", "losses", "model", "model_config", "paths", "pooling",
    "reference", "taskgroups",
}  # fmt: skip
# What each part may import besides itself and the core. The stages do not know each other, except that evaluation
# reads a generation run through the run directory's owner (notebook 05's language statistics), and curation, which
# sits between generation and training: it reads a run, judges through generation's client and cache, reads evaluation
# folders as evaluation does, and mines negatives with training's miner.
ALLOWED = {
    "generation": set(),
    "curation": {"generation.rundir", "generation.llm", "generation.cache", "generation.parsing",
                 "evaluation.task_files", "training.mining"},
    "training": set(),
    "evaluation": {"generation.rundir"},
    "testing": set(),
    "plots": set(),
}
# The top: commands and the study runner may import anything, nothing imports them.
TOP = {"cli", "study"}
MAX_LINES = 460


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The synthembed modules that `path` imports, as names relative to the package ("generation.llm", "data")."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "synthembed":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import data` names a module; `from .data import X` names a member
                candidate = ".".join([*target, alias.name])
                found.add(candidate if _exists(candidate) else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "synthembed":
                    found.add(".".join(alias.name.split(".")[1:]))
    return {name for name in found if name and _exists(name)}


def _exists(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    edges = {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}
    return {module: {t for t in targets if t != module} for module, targets in edges.items()}


def part_of(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_known_edges():
    edges = graph()
    assert "errors" in edges["data"]
    assert "model_config" in edges["model"]
    assert any(t.startswith("generation.") for t in edges["generation.pipeline"])


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_flow_one_way(module):
    part = part_of(module)
    bad = []
    for target in graph()[module]:
        target_part = part_of(target)
        if part in TOP or target_part == part and part not in CORE:
            continue
        if target_part in TOP:
            bad.append(target)  # nothing below the top imports the commands or the study runner
        elif part in CORE:
            if target_part not in CORE:
                bad.append(target)  # the core never reaches up into a stage
        elif target_part not in CORE and target not in ALLOWED.get(part, set()) and not module.endswith("commands"):
            bad.append(target)
    assert not bad, f"{module} imports {sorted(bad)}, against the layering in docs/design.md"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_readable(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by concern"
