"""The package's shape (issue 32): subpackages in layers, no import circle, small modules.

Each subpackage imports only those below it in ``LAYERS``; no robustjax import hides
inside a function (the usual way to dodge a cycle); the module graph has no circle; no
module passes ~400 lines and no function ~80 lines of code.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "robustjax"
LAYERS = ("runtime", "data", "models", "zoo", "attacks", "certify", "smoothing", "evaluation",
          "training")
SHARED = ("_checks",)       # private helpers every layer may use; they import no robustjax
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _target(module: str, name: str) -> str:
    """The module an ``from module import name`` reads: the submodule if there is one."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def _imports(path):
    """``[(target module, line, inside a function)]`` of robustjax imports in ``path``."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustjax"):
            for alias in node.names:
                out.append((_target(node.module, alias.name), node.lineno, id(node) in inner))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("robustjax"):
                    out.append((alias.name, node.lineno, id(node) in inner))
    return out


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    stray = [m for m in MODULES if _layer(m) not in LAYERS + SHARED + ("_compat", None)]
    assert not stray, f"modules outside the subpackages {LAYERS}: {stray}"


def test_each_subpackage_imports_only_those_below_it():
    bad = []
    for module, path in MODULES.items():
        own = _layer(module)
        if own not in LAYERS:
            continue
        for target, line, _ in _imports(path):
            dep = _layer(target)
            if dep in SHARED or dep == own:
                continue
            if dep not in LAYERS or LAYERS.index(dep) > LAYERS.index(own):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {target}")
    assert not bad, "imports against the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_shared_helpers_import_no_robustjax():
    for name in SHARED:
        assert not _imports(MODULES[f"robustjax.{name}"]), name


def test_no_import_inside_a_function():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {t}" for m, p in MODULES.items()
           for t, line, inner in _imports(p) if inner]
    assert not bad, "robustjax imports inside functions:\n" + "\n".join(bad)


def test_no_import_circle():
    graph = {m: {t for t, _, _ in _imports(p) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    # A package's __init__ re-exports its modules; a module importing a sibling through the
    # package (``from robustjax.attacks import geometry``) reads the sibling, not __init__.
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module}: split it by concern"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            first = body[1].lineno if doc and len(body) > 1 else body[0].lineno
            assert node.end_lineno - first + 1 <= MAX_FUNCTION_LINES, (
                f"{module}.{node.name}: {node.end_lineno - first + 1} lines of code")


def test_old_module_paths_import_with_one_warning(monkeypatch):
    """robustjax 0.1's flat paths still import: the module at its new place, one
    DeprecationWarning per path, its own spec kept, and no top-level function replaced."""
    import importlib
    import sys
    import warnings

    import robustjax
    from robustjax import _compat

    monkeypatch.setattr(_compat, "_warned", set())
    for old in ("suite", "apgd", "train"):
        monkeypatch.delitem(sys.modules, f"robustjax.{old}", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        suite = importlib.import_module("robustjax.suite")
        from robustjax.suite import run_suite  # noqa: F401  (the second use: no warning)
        apgd_module = importlib.import_module("robustjax.apgd")
        train = robustjax.train
    assert suite is importlib.import_module("robustjax.evaluation.suite")
    assert suite.__spec__.name == "robustjax.evaluation.suite"
    assert apgd_module is importlib.import_module("robustjax.attacks.apgd")
    assert callable(robustjax.apgd) and robustjax.apgd is apgd_module.apgd
    assert train is importlib.import_module("robustjax.training")
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert sorted(m.split()[0] for m in messages) == [
        "robustjax.apgd", "robustjax.suite", "robustjax.train"], messages
    assert set(_compat.MOVED.values()) <= set(MODULES)
