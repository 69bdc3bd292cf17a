"""The package's shape: imports point one way along the pipeline, with no cycles and no private reach-ins.

The import graph is read from the source with ``ast``, imports inside functions included, so a lazy
import cannot hide a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slt"

#: Layers of the pipeline, lowest first: a module may import its own layer's modules or lower ones.
LAYERS = {
    "warnings": -1,
    "results": 0,
    "samplers": 1,
    "sampling": 2,
    "tuning": 3,
    "estimators": 4,
    "oracles": 4,  # its exact targets run the sampling layer
    "dos": 4,
    "transitions": 4,
    "sweeps": 5,
    "cli": 6,
    "__main__": 7,
    "": 8,  # slt/__init__.py, the public facade
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` for every ``slt`` import in module ``name``, at any depth."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "slt"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "slt":
                continue
            names = [alias.name for alias in node.names]
            # "from slt.pkg import module" imports that module
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            others = [n for n in names if f"{base}.{n}" not in MODULES]
            found += [(m, []) for m in submodules]
            if others:
                found.append((base, others))
    return found


def layer_of(name: str) -> tuple[str, int]:
    parts = name.split(".")[1:]
    key = parts[0] if parts else ""
    return key, LAYERS[key]


GRAPH = {name: sorted({m for m, _ in imports_of(name) if m != name}) for name in MODULES}


def test_every_module_has_a_layer():
    unknown = sorted({name.split(".")[1] for name in MODULES if "." in name} - set(LAYERS))
    assert not unknown, f"add these top-level modules or packages to LAYERS: {unknown}"


def test_imports_never_point_up_the_pipeline():
    upward = []
    for name, targets in GRAPH.items():
        here, level = layer_of(name)
        for target in targets:
            there, target_level = layer_of(target)
            if target_level > level or (target_level == level and there != here and here != ""):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports against the pipeline:\n" + "\n".join(upward)


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph (package __init__ files included)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, []):
            if w not in MODULES:
                continue
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
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_package():
    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else name

    reach_ins = [
        f"{name} imports {n} from {target}"
        for name in MODULES
        for target, names in imports_of(name)
        for n in names
        if n.startswith("_") and package(target) != package(name)
    ]
    private_modules = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if target.rsplit(".", 1)[-1].startswith("_") and package(target) != package(name)
    ]
    assert not reach_ins and not private_modules, reach_ins + private_modules


def test_few_modules_sit_loose_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 8, loose


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"slt.__main__"}))
def test_every_module_imports_on_its_own(name):
    # a fresh interpreter per module would be slow; importing in order of the layers catches most
    # order-dependent imports, and the cycle test catches the rest
    __import__(name)
