"""The product's modules import without cycles: no chain of module-level imports, those only for type
checking included, leads back to where it started. Read from the source rather than by importing each
module first in a fresh interpreter (a minute and a half of Dagster imports), which would miss a cycle
through a TYPE_CHECKING import; tests/test_names.py imports the concerns that way."""

from __future__ import annotations

import ast
from pathlib import Path

import hotpot_orchestration

PACKAGE = Path(hotpot_orchestration.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _module_level(statements: list[ast.stmt]):
    """Statements run when the module is imported, into `if` (TYPE_CHECKING too) and `try` blocks."""
    for statement in statements:
        yield statement
        if isinstance(statement, ast.If | ast.Try):
            yield from _module_level(statement.body + statement.orelse)
            if isinstance(statement, ast.Try):
                yield from _module_level(statement.finalbody)
                for handler in statement.handlers:
                    yield from _module_level(handler.body)


def imports_of(module: str) -> set[str]:
    """The product's modules that `module` imports at module level."""
    names: set[str] = set()
    for node in _module_level(ast.parse(SOURCES[module].read_text()).body):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    # Its own packages are imported before it whatever it says (`from hotpot_orchestration.pitr import
    # cnpg` in pitr.assets): those are not edges that could close a cycle.
    parts = module.split(".")
    own = {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
    return (names & SOURCES.keys()) - own


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if cycle := visit(imported, [*path, module]):
                return cycle
        done.add(module)
        return None

    return next(filter(None, (visit(module, []) for module in sorted(graph))), None)


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_level_import_cycle():
    assert find_cycle({module: imports_of(module) for module in SOURCES}) is None


def test_a_module_importing_a_sibling_through_its_package_is_no_cycle():
    assert imports_of("hotpot_orchestration.pitr.assets") >= {"hotpot_orchestration.pitr.cnpg"}
    assert "hotpot_orchestration.pitr" not in imports_of("hotpot_orchestration.pitr.assets")


def test_the_rollout_plan_and_its_analysis_import_one_way():
    plan, analysis = (
        "hotpot_orchestration.release.rollout.plan",
        "hotpot_orchestration.release.rollout.analysis",
    )
    assert analysis in imports_of(plan) and plan not in imports_of(analysis)
