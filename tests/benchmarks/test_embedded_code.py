"""Code the benchmarks run in a child process (as a string) imports only what exists: a stale import
there fails only on the device machine, in its one prepared run."""

from __future__ import annotations

import ast
import importlib

import pytest

from benchmarks import shared_box_check


@pytest.mark.parametrize("source", [shared_box_check.HOLD], ids=["shared_box_check.HOLD"])
def test_every_import_of_the_child_code_resolves(source):
    tree = ast.parse(source)  # also: it is valid Python
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        else:
            module = importlib.import_module(node.module)
            for alias in node.names:  # a name in the module, or one of its submodules
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")
