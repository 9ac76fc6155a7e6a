"""The package's structure (issue 17): one module imports TensorFlow's private API, imports are
module-level (but in the command line, which silences TensorFlow before importing it), and the
dependencies go one way: tensors -> recipes -> layers -> models -> onnx_support / analysis / cli.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "quantizeml"
#: a package part -> the parts it must not import
FORBIDDEN = {
    "tensors": {"recipes", "layers", "models", "onnx_support", "analysis", "cli", "demo"},
    "recipes": {"layers", "models", "onnx_support", "analysis", "cli", "demo"},
    "quantizers": {"models", "onnx_support", "analysis", "cli", "demo"},
    "layers": {"models", "onnx_support", "analysis", "cli", "demo"},
    "models": {"onnx_support", "analysis", "cli", "demo"},
}
#: modules allowed to import quantizeml modules inside functions (TensorFlow is silenced first)
LAZY_OK = {"cli.py", "demo.py"}
#: the known exceptions to the direction, each with its reason (a new one fails the test)
ALLOWED = set()


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _imports(path):
    """(module name, is top level) of every import of quantizeml modules in a file."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if package[-1] == "__init__":
        package = package[:-1]
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + (path.name == "__init__.py")]
                name = ".".join(base + ((node.module,) if node.module else ()))
                names = [name] if node.module else [f"{name}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            out.append((name, id(node) in top))
    return out


def _part(module):
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else ""


def test_one_module_imports_tensorflow_private_api():
    users = [str(p.relative_to(PACKAGE)) for p in _modules()
             if any(name.startswith("tensorflow.python") for name, _ in _imports(p))]
    assert len(users) <= 1, users


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_dependency_direction_and_module_level_imports(path):
    rel = path.relative_to(PACKAGE)
    part = rel.parts[0].removesuffix(".py")
    for name, top_level in _imports(path):
        if not name.startswith("quantizeml"):
            continue
        target = _part(name)
        if (str(rel), name) not in ALLOWED:
            assert target not in FORBIDDEN.get(part, ()), f"{rel} imports {name}"
        assert top_level or rel.name in LAZY_OK, f"{rel} imports {name} inside a function"


#: parts that use the tensors through their public API only (``quantizeml.tensors``)
PUBLIC_TENSORS_ONLY = {"layers", "models", "onnx_support", "analysis", "cli", "demo"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_and_models_use_the_public_tensors_api(path):
    part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if part not in PUBLIC_TENSORS_ONLY:
        return
    for name, _ in _imports(path):
        assert not name.startswith("quantizeml.tensors."), \
            f"{path.relative_to(PACKAGE)} imports {name}: use quantizeml.tensors"


def test_no_import_cycle():
    """No cycle among the package's modules (module-level imports; a package's __init__
    re-exporting its submodules is not an edge back)."""
    modules = {}
    for path in _modules():
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and modules[target].name != "__init__.py":
                deps.add(target)
        graph[name] = deps
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError(" -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
