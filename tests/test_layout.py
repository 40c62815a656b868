"""The package's shape: no import cycles, lower layers never import higher ones, modules stay readable.

Read from the source with ``ast`` (nothing is imported), counting imports inside functions too: a lazy import that
closes a cycle is still a cycle a reader has to untangle.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glip_d2"
MAX_MODULE_LINES = 420

#: Layers from the bottom up: a module may import its own layer and the ones before it, never a later one.
LAYERS = [
    {"glip_d2.layers", "glip_d2.structures", "glip_d2.tokenization", "glip_d2.config"},
    {"glip_d2.modeling"},
    {"glip_d2.data", "glip_d2.evaluation"},
    {"glip_d2.checkpoint", "glip_d2.model_zoo"},
    {"glip_d2.engine"},
    {"glip_d2.export"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """glip_d2 modules imported anywhere in the file (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("glip_d2")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("glip_d2"):
                found.add(target)
                # `from .pkg import module` imports a module too
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    return -1  # glip_d2/__init__.py, compat: outside the layering


def test_no_import_cycles():
    graph = _graph()
    state, path, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if nxt.startswith(node + ".") and _module_name_is_package(node):
                continue
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _module_name_is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def test_lower_layers_do_not_import_higher_ones():
    bad = []
    for module, imported in _graph().items():
        here = _layer(module)
        if here < 0:
            continue
        bad += [f"{module} imports {m}" for m in sorted(imported) if _layer(m) > here]
    assert not bad, "\n".join(bad)


def test_modules_stay_short():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_graph_sees_imports():
    """The walker itself: known edges are found (a broken walker would pass every test above)."""
    graph = _graph()
    assert "glip_d2.modeling.dense_heads.box_coder" in graph["glip_d2.modeling.dense_heads.losses"]
    assert "glip_d2.structures.legacy_boxes" in graph["glip_d2.modeling.dense_heads.atss"]
    assert "glip_d2.tokenization" in graph["glip_d2.data.mapper"]
    assert _layer("glip_d2.engine.trainer") > _layer("glip_d2.modeling.meta_arch.glip") > _layer("glip_d2.layers")
