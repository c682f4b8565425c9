"""The package's layers stay acyclic: core, ops, losses and ODE, stages, pipeline, adapters, CLI.

Every import in every module of ``itk_odereg`` counts, function-local ones included (they
hide a cycle until call time, but it is still a cycle); only ``if TYPE_CHECKING:`` blocks
are exempt. A module may import its own layer or lower ones, and the module graph has no
cycle. The layer map is the architecture of ``docs/architecture.md``: a new module must be
placed in it, so this test also fails for a module nobody placed.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "itk_odereg"

#: layer index -> module name prefixes (relative to itk_odereg); the longest matching prefix wins.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("_version", "core", "io_utils", "transforms"),
    1: ("extension", "ops"),
    2: ("losses", "ode"),
    3: ("registration.affine", "registration.nodeo", "registration.adam", "registration.convergence",
        "registration.pyramid", "registration.stages", "msodenet"),
    4: ("registration.options", "registration.result", "registration.engine", "registration.progress"),
    5: ("adapters", "registration.driver", "registration", "qc", "filters", "ants_compat"),
    6: ("cli", "__main__", ""),
}
LAYER_NAMES = {0: "core", 1: "ops", 2: "losses/ode", 3: "stages", 4: "pipeline", 5: "adapters", 6: "cli"}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            matches = module == prefix or (prefix and module.startswith(prefix + ".")) or prefix == ""
            if matches and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    assert best is not None, f"module itk_odereg.{module} has no layer: place it in LAYERS"
    return best


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str, eager_only: bool = False) -> set[str]:
    """Modules of itk_odereg that ``module`` imports: anywhere in its body, or at import time only."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    nodes = tree.body if eager_only else ast.walk(tree)
    for node in nodes:
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("itk_odereg"):
                target = node.module[len("itk_odereg"):].lstrip(".")
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                if submodule in MODULES:
                    found.add(submodule)   # "from . import ops" imports the submodule
                elif target in MODULES:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("itk_odereg."):
                    name = alias.name[len("itk_odereg."):]
                    if name in MODULES:
                        found.add(name)
    found.discard(module)
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".") if module else []
    return [".".join(parts[:i]) for i in range(len(parts))]


# A package's own layer is that of what its __init__ imports eagerly: importing any module of
# the package runs that __init__ first (lazy PEP 562 names do not count, they run on use).
EAGER = {module: imports_of(module, eager_only=True) for module in MODULES if _is_package(module)}


def layer_of_node(module: str) -> int:
    if module in EAGER:
        return max((layer_of_node(dep) for dep in EAGER[module] if dep not in _ancestors(module) + [module]),
                   default=0)
    return layer_of(module)


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        deps = set(EAGER[module]) if module in EAGER else imports_of(module)
        own = set(_ancestors(module))
        for dep in list(deps):
            # importing a.b.c initializes the packages a and a.b first
            deps.update(p for p in _ancestors(dep) if p not in own and p != module)
        graph[module] = {dep for dep in deps if dep not in own}
    return graph


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_its_layer_or_lower(module):
    own = layer_of_node(module) if module in EAGER else layer_of(module)
    # the packages above a module are initialized before it, so they count as its imports too
    deps = GRAPH[module] | {p for p in _ancestors(module) if p in EAGER}
    upward = sorted(f"itk_odereg.{dep} ({LAYER_NAMES[layer_of_node(dep)]})" for dep in deps
                    if layer_of_node(dep) > own)
    assert not upward, f"itk_odereg.{module} ({LAYER_NAMES[own]}) imports a higher layer: {upward}"


def test_module_graph_has_no_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(f"itk_odereg.{m}" for m in cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_function_local_imports():
    # registration.stages imports the MS-ODENet stage inside a function: the edge must be seen.
    assert "msodenet.pretrained" in GRAPH["registration.stages"]
    assert "registration.options" not in GRAPH["registration.stages"]   # its TYPE_CHECKING import is exempt
