"""Imports point one way: no module of the package imports a higher layer.

The layers, lowest first, are listed below; a module may import its own layer and the
ones under it. Imports under ``if TYPE_CHECKING:`` are only annotations and may point
anywhere; imports inside functions may point up only where ``LOCAL_UPWARD`` allows.
Every module must belong to a layer, so a new one has to be placed here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "durable_jobs"
SOURCE = Path(__file__).resolve().parents[2] / "src" / PACKAGE

# Modules by their path under the package ("" is the package itself, durable_jobs/__init__;
# a package name covers all its modules).
LAYERS: list[tuple[str, frozenset[str]]] = [
    (
        "basics",
        frozenset(
            {
                "job",
                "errors",
                "codec",
                "retry",
                "options",
                "backoff_loop",
                "context",
                "events",
                "handler",
                "instrument",
                "results",
                "release",
                "clock",
            }
        ),
    ),
    ("storage", frozenset({"storage"})),
    (
        "enqueueing",
        frozenset(
            {"queue", "durable", "schedules", "waiting", "children", "explain", "operations"}
        ),
    ),
    ("running", frozenset({"executor", "maintenance", "scheduler"})),
    ("worker parts", frozenset({"dispatcher", "reporter"})),
    ("completer", frozenset({"completer"})),
    ("worker", frozenset({"worker"})),
    ("public API", frozenset({""})),
    ("tools", frozenset({"cli", "contrib", "dashboard", "metrics", "tracing", "testing"})),
]

# (importer, imported) pairs allowed to point up from inside a function.
LOCAL_UPWARD = {
    # Queue.worker() makes a Worker; the worker depends on the queue, not the reverse.
    ("queue", "worker"),
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted name under the package ("" for the package)
    imported: str
    line: int
    local: bool  # inside a function


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (SOURCE / Path(*name.split(".")) / "__init__.py").exists() if name else True


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _within_package(dotted: str) -> str | None:
    """``durable_jobs.x.y`` -> ``x.y`` (``durable_jobs`` -> ""), else None."""
    if dotted == PACKAGE:
        return ""
    if dotted.startswith(PACKAGE + "."):
        return dotted[len(PACKAGE) + 1 :]
    return None


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            inner = _within_package(alias.name)
            if inner is not None:
                yield inner
        return
    if node.level:
        base = importer.split(".") if importer else []
        if not _is_package(importer):
            base = base[:-1]  # a module's relative imports start from its package
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        inner = _within_package(node.module or "")
        if inner is None:
            return
        source = inner
    for alias in node.names:
        submodule = f"{source}.{alias.name}" if source else alias.name
        # `from . import codec` imports a module; `from . import __version__` a name.
        yield submodule if submodule in MODULES else source


def _imports(importer: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

    def visit(nodes: list[ast.stmt], local: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(importer, node):
                    yield Import(importer, target, node.lineno, local)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from visit(node.orelse, local)  # the body is for annotations only
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(node.body, True)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        stmts = [
                            c.body if isinstance(c, ast.ExceptHandler) else [c]
                            for c in children
                            if isinstance(c, ast.stmt | ast.ExceptHandler)
                        ]
                        yield from visit([s for group in stmts for s in group], local)

    yield from visit(tree.body, False)


def layer_of(module: str) -> int:
    head = module.split(".")[0] if module else ""
    for index, (_name, members) in enumerate(LAYERS):
        if module in members or head in members:
            return index
    raise LookupError(module)


ALL_IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert unplaced == [], f"place these modules in a layer of {__file__}: {unplaced}"


def test_the_layers_name_only_existing_modules() -> None:
    heads = {name.split(".")[0] if name else "" for name in MODULES}
    listed = {member for _name, members in LAYERS for member in members}
    assert listed <= heads, f"no such module: {sorted(listed - heads)}"


def test_the_scan_sees_imports() -> None:
    # A broken scan would find nothing and pass everything.
    found = {(i.importer, i.imported) for i in ALL_IMPORTS}
    assert ("worker", "dispatcher") in found
    assert ("durable", "options") in found
    assert ("tracing", "") in found  # from . import __version__
    assert ("cli.app", "storage.admin") in found
    assert ("queue", "worker") in found  # the local import in Queue.worker()


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if any(i.importer == m for i in ALL_IMPORTS))
)
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = layer_of(module)
    upward = []
    for imp in ALL_IMPORTS:
        if imp.importer != module or layer_of(imp.imported) <= own:
            continue
        if imp.local and (module, imp.imported) in LOCAL_UPWARD:
            continue
        where = "inside a function" if imp.local else "at module level"
        upward.append(
            f"{module}:{imp.line} imports {imp.imported or PACKAGE} {where}"
            f" ({LAYERS[own][0]} -> {LAYERS[layer_of(imp.imported)][0]})"
        )
    assert upward == []


def _outside_storage() -> Iterator[tuple[str, ast.AST]]:
    for name, path in MODULES.items():
        if name == "storage" or name.startswith("storage."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            yield name, node


def test_code_outside_storage_never_asks_which_storage_or_database_it_has() -> None:
    # Everything outside storage/ is written against the JobStore protocol: no
    # isinstance(..., SQLStorage), no dialect or SQLite-ness checks, no branches that
    # only a different storage would take.
    found = []
    for module, node in _outside_storage():
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and "SQLStorage" in ast.unparse(node.args[1])
        ):
            found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Attribute) and (
            node.attr in ("is_sqlite", "is_memory")
            or (node.attr == "dialect" and ast.unparse(node.value).endswith("storage"))
        ):
            found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.alias) and node.name in (
            "SQLiteDialect",
            "PostgresDialect",
            "SQLiteWatcher",
            "PostgresListener",
        ):
            found.append(f"{module}: imports {node.name}")
    assert found == []
