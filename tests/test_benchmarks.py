"""The benchmarks: the docs' tables are the ones the stored results give,
the harness runs end to end, and every script stays runnable.

The scripts take minutes and are not run by the suite; an import of a name
that a refactoring moved would only show when someone runs them.
"""

import ast
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from benchmarks import _harness

REPO = pathlib.Path(__file__).parent.parent
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "benchmarks" / "studies").glob("*.py"))


@pytest.fixture
def copy(tmp_path):
    """The docs, the README and the stored results, in a temporary tree."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_the_docs_tables_are_the_generated_ones(copy):
    # A table pasted or edited by hand, or results stored without
    # `python -m benchmarks tables` after them, fail here.
    report = _harness.render_tables(copy)
    generated = {name for done, _ in report.values() for name in done}
    assert {"backends", "fit_overhead", "transformer_blocks"} <= generated
    assert {"text_models", "dashboard", "activity_overhead", "fit_overhead_mobilenet"} <= generated
    assert {"auto_choice", "estimator", "profile_exact", "compare_methods"} <= generated
    for path in _harness.markdown_files(REPO):
        relative = path.relative_to(REPO)
        assert (copy / relative).read_text() == path.read_text(), (
            f"{relative}: a generated table differs from benchmarks/results/; "
            "run `python -m benchmarks tables`"
        )


def test_the_readme_figures_are_generated(copy):
    # The README quotes benchmark figures only through generated views.
    report = _harness.render_tables(copy)
    assert "transformer_blocks" in report["README.md"][0]
    assert "<!-- table: transformer_blocks:summary -->" in (REPO / "README.md").read_text()


def test_tables_leave_a_table_without_results_alone(copy):
    (copy / "benchmarks" / "results" / "fit_overhead.json").unlink()
    before = (copy / "docs" / "benchmarks.md").read_text()
    report = _harness.render_tables(copy)
    assert "fit_overhead" in report["docs/benchmarks.md"][1]
    assert (copy / "docs" / "benchmarks.md").read_text() == before


def test_tables_are_deterministic(copy):
    _harness.render_tables(copy)
    once = (copy / "docs" / "benchmarks.md").read_text()
    _harness.render_tables(copy)
    assert (copy / "docs" / "benchmarks.md").read_text() == once


def test_a_quick_run_end_to_end(tmp_path):
    # About 10 s: one TensorFlow child, the digits MLP, one later call.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "backends", "--quick", "--backends", "tensorflow",
         "--models", "digits_mlp", "--repeats", "1", "--results", str(tmp_path)],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300,
    )
    record = json.loads((tmp_path / "backends.json").read_text())
    assert record["versions"]["keras"] and record["commit"] and record["machine"]["cores"]
    assert len(record["load"]["start"]) == 3
    (case,) = record["cases"]
    assert case["status"] == "ok" and case["case"]["backend"] == "tensorflow"
    runs = case["result"]["runs"]
    assert [(r["wrt"], r["status"]) for r in runs] == [("weights", "ok"), ("inputs", "ok")]
    assert all(r["steady"] > 0 and r["first"] > 0 for r in runs)
    assert "| digits MLP 64-128-64-10 | weights | exact, B=4 |" in _harness.module("backends").table(record)


def _package_imports(path, package="keras_neuron_sensitivity"):
    """`[(module, name or None)]` for every import of `package` in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [
                (alias.name, None)
                for alias in node.names
                if alias.name.startswith(package)
            ]
    return out


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.relative_to(REPO / "benchmarks").as_posix())
def test_benchmark_imports_exist(path):
    # The package's names, and the benchmarks' own (`benchmarks.models`,
    # `benchmarks._machine`), which the studies import too.
    for module, name in _package_imports(path) + _package_imports(path, "benchmarks"):
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule, or ImportError


def test_the_scan_finds_the_imports():
    # The check above would pass vacuously if the scan found nothing.
    found = [imp for path in BENCHMARKS for imp in _package_imports(path)]
    assert ("keras_neuron_sensitivity.engine.estimate", "Estimator") in found  # studies/
    assert ("keras_neuron_sensitivity.engine", "cost") in found


def test_list_shows_the_benchmarks_and_the_studies():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "list"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    benchmarks, _, studies = out.partition("Studies")
    assert all(name in benchmarks for name in _harness.BENCHMARKS)
    for path in (REPO / "benchmarks" / "studies").glob("[!_]*.py"):
        assert f"\n{path.stem} " in studies
    assert {"soak", "applications_rules"} <= {p.stem for p in (REPO / "benchmarks" / "studies").glob("*.py")}
    # Every other module of benchmarks/ is a benchmark on the harness.
    modules = {p.stem for p in (REPO / "benchmarks").glob("[!_]*.py")} - {"models"}
    assert modules == set(_harness.BENCHMARKS)


def test_the_studies_run_as_scripts(tmp_path):
    # `--help` only (a study takes minutes): run from elsewhere, its imports resolve.
    studies = sorted((REPO / "benchmarks" / "studies").glob("*.py"))
    assert studies
    for path in studies:
        subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
