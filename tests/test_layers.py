"""The layers point one way: no import cycle, no core module reaching up into the
cockpit, a store that knows nothing above it, errors that carry no HTTP status."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import fazt
from fazt.errors import FaztError

SRC = Path(fazt.__file__).parent
# Top to bottom; a module may import its own layer's modules or those below it.
LAYERS = [
    ("fazt.cli", "fazt.__main__", "fazt.server", "fazt.frozen"),
    ("fazt.app",),
    ("fazt.cockpit", "fazt.sites", "fazt.webapp", "fazt.requestlog"),
    ("fazt.instance",),
    ("fazt.runtime", "fazt.vfs", "fazt.stability", "fazt.deploy", "fazt.deploy_client",
     "fazt.zipbuild", "fazt.archive", "fazt.tokens", "fazt.auth", "fazt.settings",
     "fazt.hosts", "fazt.http_errors", "fazt.negotiation", "fazt.compression",
     "fazt.siterules", "fazt.metrics", "fazt.restore", "fazt.https", "fazt.certs",
     "fazt.autocert", "fazt.acme_client", "fazt.pem", "fazt.proxies", "fazt.replica",
     "fazt.heap", "fazt.envtuning"),
    ("fazt.store",),
    ("fazt.errors", "fazt.constants", "fazt"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every fazt module and the fazt modules it imports (at the top or inside a function)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = absolute(node, name, path.name == "__init__.py")
                if not base.startswith("fazt"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("fazt")}
        graph[name] = found - {name}
    return graph


def absolute(node: ast.ImportFrom, module: str, package: bool) -> str:
    """The module a `from ... import` names, a relative one (`from .x import y`) included."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if package else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def layer_of(module: str) -> int | None:
    """The module's layer; None for one not placed (test_every_module_has_a_layer)."""
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "fazt" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return None if best is None else best[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> what it imports), or None."""
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise Cycle(cycle)
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    try:
        for module in sorted(graph):
            if module not in state:
                visit(module, [module])
    except Cycle as found:
        return found.args[0]
    return None


class Cycle(Exception):
    pass


def test_no_import_cycle():
    cycle = find_cycle(imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer():
    """A module no layer names would be free to import anything, upward included."""
    unplaced = sorted(module for module in imports() if layer_of(module) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_relative_imports_are_read_as_the_modules_they_name():
    def parsed(code: str, module: str, package: bool = False) -> str:
        return absolute(ast.parse(code).body[0], module, package)

    assert parsed("from .kv import x", "fazt.runtime.bridge") == "fazt.runtime.kv"
    assert parsed("from .. import cli", "fazt.runtime.bridge") == "fazt"
    assert parsed("from .engine import x", "fazt.runtime", package=True) == \
        "fazt.runtime.engine"
    assert parsed("from fazt.store import x", "fazt.vfs") == "fazt.store"


def test_imports_point_down_the_layers():
    wrong = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
             for module, targets in imports().items() for target in targets
             if None not in (layer_of(target), layer_of(module))
             and layer_of(target) < layer_of(module)]
    assert not wrong, "imports pointing up a layer:\n" + "\n".join(sorted(wrong))


def test_only_the_router_knows_the_cockpit():
    users = {module for module, targets in imports().items()
             if any(t.startswith("fazt.cockpit") for t in targets)
             and not module.startswith("fazt.cockpit")}
    assert users == {"fazt.app"}


def test_domain_errors_carry_no_http_status():
    for info in pkgutil.walk_packages(fazt.__path__, "fazt."):
        if info.name not in ("fazt.__main__",):
            importlib.import_module(info.name)
    kinds, pending = [], [FaztError]
    while pending:
        kind = pending.pop()
        kinds.append(kind)
        pending += kind.__subclasses__()
    with_status = [f"{k.__module__}.{k.__name__}" for k in kinds if "status" in vars(k)]
    assert not with_status, (f"{with_status} set an HTTP status; subclass a domain error "
                             "in fazt.errors (http_errors maps it to a status) instead")
    assert "status" not in inspect.signature(FaztError).parameters


def test_shared_constants_are_defined_once():
    """MB, the read piece, the default port and the back end's path live in fazt.constants."""
    again = re.compile(r'^(MB|PIECE|DEFAULT_PORT) = |^\w+ = "api/main\.js"|^\w+ = 4698\b', re.M)
    found = [f"{path.relative_to(SRC)}: {m.group(0)}" for path in SRC.rglob("*.py")
             if path.name != "constants.py" for m in again.finditer(path.read_text())]
    assert not found, "defined again outside fazt/constants.py: " + "; ".join(found)
