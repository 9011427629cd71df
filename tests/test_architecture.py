"""The house rules of docs/architecture.md, read from the code's own imports: no import
circle (imports inside functions and under TYPE_CHECKING count), no import from a layer above,
the plugin API built on leaves only, plugins that see nothing but the plugin API, and modules
short enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450

#: layer -> the modules in it (a name ending in ".*" covers a package's modules). Each module
#: imports only modules of its own layer or below (docs/architecture.md, "Layers").
LAYERS: dict[int, tuple[str, ...]] = {
    1: ("server", "server.errors", "server.identity", "server.buckets", "server.addresses",
        "server.rooms", "server.protocol", "server.protocol.*", "server.backends.base",
        "server.config.base", "server.versions", "server.event_loop", "server.collector"),
    2: ("server.config", "server.config.*", "server.backends", "server.backends.*", "server.log"),
    3: ("server.connection", "server.hub", "server.auth", "server.metrics"),
    4: ("server.plugin_api",),
    5: ("server.node", "server.registry", "server.pipeline", "server.pipeline.*"),
    6: ("server.frames", "server.lifecycle", "server.ws", "server.http", "server.http.*",
        "server.reload", "server.keys"),
    7: ("server.app", "server.cli", "server.__main__", "server.tools", "server.tools.*",
        "server.testing", "server.workers"),
}
PLUGIN_DIRS = ("plugins", "examples/poll_plugin/switchboard_poll")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*dirs: str) -> dict[str, Path]:
    return {module_name(p): p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))}


PROJECT = sources("server", "plugins")


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``name`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` imports a.b.c's module
                target = target.rpartition(".")[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching pattern, layer)
    for layer, patterns in LAYERS.items():
        for pattern in patterns:
            if pattern == name or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                if best is None or len(pattern) > best[0]:
                    best = (len(pattern), layer)
    return best[1] if best else None


def test_the_import_walk_sees_a_circle() -> None:
    """The checks below are only as good as this walk: it finds a circle made of a plain import
    one way and a type-only import inside a function the other way."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    tree = ROOT / "server" / "node.py"
    assert "server.plugin_api" in imports_of("server.node", tree, PROJECT)  # under TYPE_CHECKING


def test_no_import_circle() -> None:
    assert circles(graph(PROJECT)) == []


def test_every_server_module_has_a_layer_and_imports_none_above_it() -> None:
    edges = graph({n: p for n, p in PROJECT.items() if n.startswith("server")})
    unplaced = [n for n in edges if layer_of(n) is None]
    assert unplaced == [], "give each module a layer in docs/architecture.md and in LAYERS"
    upward = [f"{n} (layer {layer_of(n)}) imports {t} (layer {layer_of(t)})"
              for n, targets in sorted(edges.items()) for t in sorted(targets)
              if t.startswith("server") and (layer_of(t) or 0) > (layer_of(n) or 0)]
    assert upward == []
    assert not [n for n, targets in edges.items() for t in targets if t.startswith("plugins")]


def test_the_plugin_api_is_built_on_leaves_only() -> None:
    imported = imports_of("server.plugin_api", PROJECT["server.plugin_api"], PROJECT)
    assert {t for t in imported if layer_of(t) != 1} == set()


@pytest.mark.parametrize("folder", PLUGIN_DIRS)
def test_plugins_see_only_the_plugin_api(folder: str) -> None:
    plugins = sources(folder)
    assert plugins, folder
    problems: list[str] = []
    for name, path in plugins.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                used = node.module
            elif isinstance(node, ast.Import):
                used = next((a.name for a in node.names if a.name.split(".")[0] == "server"), "")
            else:
                used = ""
            if used.split(".")[0] == "server" and used != "server.plugin_api":
                problems.append(f"{name}:{node.lineno} imports {used}")
            if isinstance(node, ast.Attribute) and node.attr in ("services", "backend"):
                problems.append(f"{name}:{node.lineno} uses .{node.attr}")
            if isinstance(node, ast.Name) and node.id in ("services", "backend"):
                problems.append(f"{name}:{node.lineno} uses {node.id}")
    assert problems == []


def test_modules_are_short_enough_to_read() -> None:
    files = [*(ROOT / "server").rglob("*.py"), *(ROOT / "plugins").rglob("*.py"),
             *(ROOT / "examples").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "static").glob("demo*.js")]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_import_circle_among_the_browser_modules() -> None:
    """static/*.js: the demo's feature modules talk through demo-core.js's ``ui`` registry."""
    pattern = re.compile(r"""^\s*import\b[^;]*?\bfrom\s+["']\./([\w.-]+\.js)["']""", re.M | re.S)
    edges = {p.name: set(pattern.findall(p.read_text(encoding="utf-8")))
             for p in (ROOT / "static").glob("*.js")}
    assert edges["demo.js"], "the walk must see demo.js's imports"
    assert circles(edges) == []


def test_only_the_redis_backend_imports_redis() -> None:
    importers = sorted(name for name, path in PROJECT.items()
                       if any(isinstance(node, (ast.Import, ast.ImportFrom))
                              and any(n == "redis" or n.startswith("redis.")
                                      for n in ([a.name for a in node.names]
                                                if isinstance(node, ast.Import)
                                                else [node.module or ""]))
                              and not getattr(node, "level", 0)
                              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))))
    assert importers and all(n.startswith("server.backends.redis") for n in importers), importers


def _importers(package: str, known: dict[str, Path]) -> list[str]:
    """The modules of ``known`` with an absolute import of ``package`` (or one of its modules)."""
    def imports(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and not node.level:
            return [node.module or ""]
        return []
    return sorted(name for name, path in known.items()
                  if any(n == package or n.startswith(package + ".")
                         for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                         for n in imports(node)))


def test_only_the_event_loop_module_imports_uvloop() -> None:
    """uvloop is optional (the ``speed`` extra): one module decides whether the server (and the
    bench's raw aiohttp reference, measured on the same loop) runs on it."""
    assert _importers("uvloop", PROJECT) == ["server.event_loop"]
