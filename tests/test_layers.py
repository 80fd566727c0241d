"""The layer contracts in pyproject.toml (import-linter): cli -> commands -> recipes -> library -> config -> models
-> data -> errors, recipes independent of each other, no import cycles among sibling modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(tmp_path):
    pytest.importorskip("importlinter")
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                             "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The contract check can fail: a config module importing a recipe breaks it."""
    pytest.importorskip("importlinter")
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "llmkit", copy / "llmkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "llmkit" / "config" / "loader.py").open("a") as fh:
        fh.write("\n\ndef _upward():\n    from llmkit.recipes import finetune  # noqa: F401\n")
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                             "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"],
                            cwd=copy, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(copy)})
    assert result.returncode != 0
    assert "llmkit.config is not allowed to import llmkit.recipes" in result.stdout


LLMKIT = ROOT / "llmkit"
TRAINING_LOOPS = {("training/loop.py", "train_and_save")}  # the one long function: the training run itself
MAX_FUNCTION_LINES = 60


def test_no_function_outside_the_training_loop_is_long():
    import ast

    long = []
    for path in sorted(LLMKIT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = (str(path.relative_to(LLMKIT)), node.name)
                if lines > MAX_FUNCTION_LINES and where not in TRAINING_LOOPS:
                    long.append(f"{where[0]}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_smoke_mode_knows_no_command():
    """smoke.py's machinery is generic: no command's name as a string, no command's own config section read;
    each recipe declares what differs (SMOKE)."""
    import ast

    from llmkit.commands import COMMANDS

    names = set(COMMANDS)
    sections = {c.section for c in COMMANDS.values()} - {"train"}
    tree = ast.parse((LLMKIT / "smoke.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not strings & names, strings & names
    assert not attributes & sections, attributes & sections
