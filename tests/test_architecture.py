"""The package's shape: no import cycles, no function-local imports dodging them, inference apart from
training, platform choices only in ``jaxdiff.execution``. Read from the source (ast), nothing is run."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxdiff"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
ENTRY_POINTS = {"train": ROOT / "train.py", "sample": ROOT / "sample.py"}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The jaxdiff modules an import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "jaxdiff"]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    if base.split(".")[0] != "jaxdiff":
        return []
    named = [f"{base}.{alias.name}" for alias in node.names]
    return [name if name in MODULES else base for name in named]


def _imports(path: pathlib.Path, module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level jaxdiff imports, [(line, target)] of jaxdiff imports inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    top, local = set(), []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.update(_targets(node, module, is_package))
        elif isinstance(node, ast.If | ast.Try):  # guarded module-level imports still count
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    top.update(_targets(sub, module, is_package))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    local += [(sub.lineno, t) for t in _targets(sub, module, is_package)]
    return top, local


GRAPH = {name: _imports(path, name)[0] for name, path in {**MODULES, **ENTRY_POINTS}.items()}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read():
    assert "jaxdiff.training.trainer" in GRAPH and "jaxdiff.inference.loading" in GRAPH
    assert "jaxdiff.run_config" in GRAPH["jaxdiff.training.trainer"]


def test_no_import_cycles():
    """A cycle between modules (a package's ``__init__`` importing its own submodules is not one)."""
    cycles = []
    for name in MODULES:
        for target in GRAPH[name]:
            if target == name or name.startswith(target + "."):
                continue  # a module and its own package
            if name in _closure(target) and not target.startswith(name + "."):
                cycles.append(f"{name} -> {target}")
    assert not cycles, cycles


@pytest.mark.parametrize("path", [*MODULES.values(), *ENTRY_POINTS.values()], ids=lambda p: p.name)
def test_no_function_local_imports_of_jaxdiff(path):
    module = _module_name(path) if path.is_relative_to(PACKAGE) else path.stem
    local = _imports(path, module)[1]
    assert not local, f"{path.relative_to(ROOT)}: function-local imports {local}"


@pytest.mark.parametrize("start", ["jaxdiff.inference", "sample"])
def test_inference_and_sample_py_never_import_training(start):
    reached = _closure(start)
    assert "jaxdiff.inference.loading" in reached or start == "jaxdiff.inference.loading"
    training = sorted(m for m in reached if m.startswith("jaxdiff.training"))
    assert not training, f"{start} imports {training}"


def test_models_leave_platform_choices_to_execution():
    """The models ask ``jaxdiff.execution`` for platform-dependent operations; they never look at the
    platform or the environment themselves."""
    looks = ("platform_dependent", "default_backend", "os.environ", "getenv")
    offenders = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in sorted((PACKAGE / "models").rglob("*.py"))
        for word in looks
        if word in path.read_text()
    ]
    assert not offenders, offenders
    assert "jaxdiff.execution.ops" in GRAPH["jaxdiff.models.layers"]
