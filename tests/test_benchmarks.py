"""The benchmark scripts stay runnable: every name they import from the package exists.

The scripts take minutes and are not run by the suite; an import of a name
that a refactoring moved would only show when someone runs them.
"""

import ast
import importlib
import pathlib

import pytest

BENCHMARKS = sorted((pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py"))


def _package_imports(path):
    """`[(module, name or None)]` for every import of the package in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "keras_neuron_sensitivity"
        ):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [
                (alias.name, None)
                for alias in node.names
                if alias.name.startswith("keras_neuron_sensitivity")
            ]
    return out


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_exist(path):
    for module, name in _package_imports(path):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule, or ImportError


def test_the_scan_finds_the_imports():
    # The check above would pass vacuously if the scan found nothing.
    found = [imp for path in BENCHMARKS for imp in _package_imports(path)]
    assert ("keras_neuron_sensitivity.engine.sweep", "Sweep") in found
    assert ("keras_neuron_sensitivity._computation", "model_graph") in found
