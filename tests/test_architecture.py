"""The layout's rules, checked on the source: imports flow one way and no files import each other.

shared ground (errors, config, utils, tokenizer, llm_client) -> data -> model -> train / infer
-> eval / interpret -> cli. Imports under `if TYPE_CHECKING:` (annotations only) don't run and
don't count for the flow; a cycle through them is refused all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "tinystories"
LAYERS = {"errors": 0, "config": 0, "utils": 0, "tokenizer": 0, "llm_client": 0, "html": 0, "render": 0,
          "__init__": 0,
          "folder_lock": 0, "cbuild": 0,
          "data": 1, "model": 2, "train": 3, "infer": 3, "eval": 4, "interpret": 4, "cli": 5}
LIBRARY = ("data", "model", "train", "infer", "eval", "interpret")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` exactly (`if not TYPE_CHECKING:` runs)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str | None, level: int, here: str, is_package: bool) -> str:
    """The absolute name of `from <level dots><module> import ...` written in module `here`."""
    if not level:
        return module or ""
    parts = here.split(".") if is_package else here.split(".")[:-1]
    base = parts[:len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _dynamic_prefix(call: ast.Call, here: str) -> str | None:
    """`importlib.import_module(f"{__name__}.{x}")` / `(f"tinystories.cli.{x}")`: the package."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "import_module" or not call.args:
        return None
    arg, prefix = call.args[0], ""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if not isinstance(arg, ast.JoinedStr):
        return None
    for value in arg.values:
        if isinstance(value, ast.Constant):
            prefix += str(value.value)
        elif isinstance(value.value, ast.Name) and value.value.id == "__name__":
            prefix += here
        else:
            break
    return prefix.rstrip(".")


def _imported(node: ast.AST, here: str, is_package: bool) -> set[str]:
    """The tinystories modules (or names) one import statement names."""
    if isinstance(node, ast.ImportFrom):
        module = _absolute(node.module, node.level, here, is_package)
        if module.startswith("tinystories"):
            return {module, *(f"{module}.{a.name}" for a in node.names)}  # `from pkg import module`
    elif isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith("tinystories")}
    return set()


def runtime_imports(path: Path) -> set[str]:
    """tinystories modules `path` imports when it runs: static imports anywhere in the file
    (relative ones resolved), and `importlib.import_module` of a package's modules; not
    those under `if TYPE_CHECKING:` (annotations only)."""
    here, is_package = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, (ast.ImportFrom, ast.Import)):
            found |= _imported(node, here, is_package)
        elif isinstance(node, ast.Call) and (prefix := _dynamic_prefix(node, here)):
            found |= {m for m in FILES if (m == prefix or m.startswith(prefix + ".")) and
                      not m.endswith(".__main__")}  # (a script, run and never imported)
    return found


def all_imports(path: Path) -> set[str]:
    """`runtime_imports` and those under `if TYPE_CHECKING:` too (names used in annotations)."""
    here, is_package = module_name(path), path.name == "__init__.py"
    found = runtime_imports(path)
    for node in ast.walk(ast.parse(path.read_text())):
        found |= _imported(node, here, is_package)
    return found


FILES = {module_name(p): p for p in SRC.rglob("*.py")}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[part]


@pytest.mark.parametrize("module", sorted(FILES))
def test_imports_flow_down_the_pipeline(module: str) -> None:
    mine = layer(module)
    pkg = module.split(".")[1] if "." in module else ""
    for target in runtime_imports(FILES[module]):
        if target not in FILES:  # a name imported from a module, not a module
            continue
        other_pkg = target.split(".")[1] if "." in target else ""
        up = layer(target) > mine
        sibling = layer(target) == mine and other_pkg != pkg and mine in (3, 4)
        assert not up and not sibling, f"{module} imports {target}: against the pipeline's flow"


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    """No two files import each other, directly or through others; a package's `__init__`
    counts as the module it is (the modules a parent package runs on import are not edges)."""
    graph = {m: {t for t in runtime_imports(p) if t in FILES and t != m} for m, p in FILES.items()}
    assert not import_cycles(graph), f"import cycles: {import_cycles(graph)}"


def test_no_import_cycles_even_in_annotations() -> None:
    """No two files name each other even for types only (`if TYPE_CHECKING:`): such a pair reads
    as one module split in two."""
    graph = {m: {t for t in all_imports(p) if t in FILES and t != m} for m, p in FILES.items()}
    assert not import_cycles(graph), f"import cycles through annotations: {import_cycles(graph)}"


def test_the_import_checks_see_what_they_must() -> None:
    """The checker itself: relative and dynamic imports count, `if not TYPE_CHECKING:` runs,
    and a three-file cycle is found."""
    assert _absolute("x", 1, "tinystories.eval.tasks.bpb", False) == "tinystories.eval.tasks.x"
    assert _absolute(None, 2, "tinystories.eval.tasks", True) == "tinystories.eval"
    assert "tinystories.eval.tasks.bpb" in runtime_imports(FILES["tinystories.eval.tasks"])
    assert "tinystories.cli.train" in runtime_imports(FILES["tinystories.cli"])
    tree = ast.parse("if not TYPE_CHECKING:\n    pass")
    assert not _is_type_checking(tree.body[0].test)  # type: ignore[attr-defined]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    native = FILES["tinystories.model.native"]  # names GPT for annotations only
    assert "tinystories.model.gpt" in all_imports(native) - runtime_imports(native)


@pytest.mark.parametrize("module", sorted(m for m in FILES if m.split(".")[1:2] and m.split(".")[1] in LIBRARY))
def test_library_packages_hold_no_user_interaction(module: str) -> None:
    """argparse, print and input belong to the CLI; the library logs and returns."""
    tree = ast.parse(FILES[module].read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "argparse" not in imports and not names & {"print", "input"}, module
