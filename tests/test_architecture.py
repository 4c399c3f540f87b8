"""The layout's rules, checked on the source: imports flow one way and no two files import each other.

shared ground (errors, config, utils, tokenizer, llm_client) -> data -> model -> train / infer
-> eval / interpret -> cli. Imports under `if TYPE_CHECKING:` (annotations only) don't run and
don't count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "tinystories"
LAYERS = {"errors": 0, "config": 0, "utils": 0, "tokenizer": 0, "llm_client": 0, "html": 0, "__init__": 0,
          "data": 1, "model": 2, "train": 3, "infer": 3, "eval": 4, "interpret": 4, "cli": 5}
LIBRARY = ("data", "model", "train", "infer", "eval", "interpret")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """tinystories modules `path` imports when it runs (anywhere in the file, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinystories"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tinystories")}
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


def test_no_two_files_import_each_other() -> None:
    graph = {m: {t for t in runtime_imports(p) if t in FILES and t != m} for m, p in FILES.items()}
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert not pairs, f"files importing each other: {pairs}"


@pytest.mark.parametrize("module", sorted(m for m in FILES if m.split(".")[1:2] and m.split(".")[1] in LIBRARY))
def test_library_packages_hold_no_user_interaction(module: str) -> None:
    """argparse, print and input belong to the CLI; the library logs and returns."""
    tree = ast.parse(FILES[module].read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "argparse" not in imports and not names & {"print", "input"}, module
