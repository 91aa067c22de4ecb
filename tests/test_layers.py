"""The import rule of docs/architecture.md, checked on the source: imports only go down the pipeline.

Each package has a layer; a module may import from its own layer or a lower one. An import
inside a function is allowed only where it buys start-up time, and it says so in a comment
on its line (`# lazy: ...`): a cycle dodged by a late import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ownllm"

LAYERS = {
    "__init__": 0,
    "core": 0,
    "model": 1,
    "tokenizer": 1,
    "run": 2,
    "data": 3,
    "chatformat": 3,
    "train": 4,
    "eval": 7,  # it measures the assistant too
    "export": 7,
    "inference": 5,
    "knowledge": 5,
    "assistant": 6,
    "server": 7,
    "commands": 8,
    "cli": 9,
    "__main__": 9,
}
ANYWHERE = {"ownllm", "ownllm.resources"}  # the package itself (its version) and its data files


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[0] == "resources":
            continue
        yield path, parts[0].removesuffix(".py")


def imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing package
            return [f"ownllm.{package}.{node.module or ''}".rstrip(".")]
        return [node.module or ""]
    return []


def top(name: str) -> str | None:
    if not name.startswith("ownllm.") or name in ANYWHERE:
        return None
    return name.split(".")[1]


def test_every_package_has_a_layer():
    assert {package for _, package in modules()} <= set(LAYERS), "add the new package to LAYERS and to the docs"


def test_imports_only_go_down_the_pipeline():
    wrong = []
    for path, package in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name in imported(node, package):
                target = top(name)
                if target is not None and LAYERS[target] > LAYERS[package]:
                    wrong.append(f"{path.relative_to(SRC)}:{node.lineno} ({package}) imports {name}")
    assert not wrong, "imports against the pipeline's direction:\n" + "\n".join(wrong)


def test_imports_inside_functions_say_why():
    unexplained = []
    for path, _package in modules():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for func in ast.walk(ast.parse(source)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(SRC)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "imports inside functions without a '# lazy: why' comment:\n" + "\n".join(unexplained)
