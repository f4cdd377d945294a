"""The documentation stays true: examples run, citations resolve, the
reference is generated, the README stays a front door.

- The docstring examples of the public modules run (doctest), and so does
  the `Rule` example of docs/how-it-computes.md.
- docs/api.md is what `scripts/api_reference.py` writes from the docstrings.
- Every file that the code cites in its comments and docstrings (package,
  tests, benchmarks, demos, scripts), and every relative link and cited path
  in README.md and docs/, exists; every `#anchor` of a link names a heading.
- README.md is at most 250 lines.
"""

import ast
import doctest
import importlib
import io
import pathlib
import re
import tokenize

import keras
import numpy as np
import pytest

import keras_neuron_sensitivity

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_neuron_sensitivity"
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250

# The modules of the public API whose docstring examples must run.
DOCTEST_MODULES = [
    "keras_neuron_sensitivity.api",
    "keras_neuron_sensitivity.callback",
    "keras_neuron_sensitivity.health",
    "keras_neuron_sensitivity.report",
    "keras_neuron_sensitivity.errors",
    "keras_neuron_sensitivity.engine.summary",
    "keras_neuron_sensitivity.engine.site",
    "keras_neuron_sensitivity.engine.rules.base",
    "keras_neuron_sensitivity.engine.rules.table",
]

# A path to a file of this repository: at least one folder, a known suffix.
# Not preceded by a word character, "/", "." or ":" (URLs, absolute routes
# such as `/data/plugin_entry.html`, or the middle of a longer path).
_PATH = re.compile(
    r"(?<![\w/.:%-])((?:\.\.?/)*(?:[\w.-]+/)+[\w.-]+\.(?:py|md|sh|png|js|html|css|toml|json))(?![\w/])"
)
# Paths of other projects that comments cite (upstream sources).
_EXTERNAL = ("keras/", "tensorflow/", "tensorboard/", "torch/", "jax/", "captum/", "optax/", "backpack/", "keras_hub/")
# Where a short path in a comment may be rooted: beside the citing file, or
# in the repository, the package, the engine or the tests.
_ROOTS = [ROOT, PACKAGE, PACKAGE / "engine", ROOT / "tests"]


# --- docstring examples --------------------------------------------------


def _doctests():
    globs = {"keras": keras, "np": np}
    globs.update({name: getattr(keras_neuron_sensitivity, name) for name in keras_neuron_sensitivity.__all__})
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in DOCTEST_MODULES:
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, globs=dict(globs)) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def test_the_public_api_has_examples():
    # The parametrized test below would pass vacuously if none were found.
    names = {t.name.rsplit(".", 1)[-1] for t in DOCTESTS}
    assert {"neuron_sensitivity", "neuron_activity", "neuron_jacobian", "load_sensitivity",
            "NeuronSensitivityCallback", "clear_cache"} <= names


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name.replace("keras_neuron_sensitivity.", ""))
def test_docstring_examples_run(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    output = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=output.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"The example of {test.name} failed:\n{output.getvalue()}"


def test_the_rule_example_of_the_guide_runs():
    text = (DOCS / "how-it-computes.md").read_text()
    block = re.search(r"<!-- example: rule -->\n```python\n(.*?)```\n<!-- /example -->", text, re.S)
    assert block, "docs/how-it-computes.md lost its marked `Rule` example"
    from keras_neuron_sensitivity.engine.rules import table

    saved = dict(table._RULES), set(table._REGISTERED)
    try:
        exec(compile(block.group(1), "docs/how-it-computes.md", "exec"), {"__name__": "rule_example"})
    finally:  # the example's registration must not reach other tests
        table._RULES.clear(), table._RULES.update(saved[0])
        table._REGISTERED.clear(), table._REGISTERED.update(saved[1])


# --- the API reference -----------------------------------------------------


def test_api_reference_is_generated_from_the_docstrings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = script.render()
    written = (DOCS / "api.md").read_text() if (DOCS / "api.md").exists() else ""
    assert written == expected, (
        "docs/api.md differs from the docstrings. Regenerate it: "
        "`python scripts/api_reference.py` from the repository root, and commit it."
    )


# --- citations ---------------------------------------------------------------


def _python_comments_and_docstrings(path):
    """`[(line, text)]`: every comment and docstring of a Python file."""
    source = path.read_text()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.append((body[0].lineno, body[0].value.value))
    return found


def _other_comments(path):
    """Comments of shell scripts, the Makefile and JavaScript."""
    marker = "//" if path.suffix == ".js" else "#"
    return [
        (n, line.split(marker, 1)[1])
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if marker in line and (path.suffix != ".js" or line.lstrip().startswith(("//", "*", "/*")))
    ]


def _cited_in_code():
    files = [p for folder in ("keras_neuron_sensitivity", "tests", "benchmarks", "demos", "scripts")
             for p in sorted((ROOT / folder).rglob("*")) if p.is_file()]
    files += [ROOT / "Makefile", ROOT / ".ci" / "run"]
    for path in files:
        if path.suffix == ".py":
            texts = _python_comments_and_docstrings(path)
        elif path.suffix in (".sh", ".js") or path.name in ("Makefile", "run"):
            texts = _other_comments(path)
        else:
            continue
        for line, text in texts:
            for cited in _PATH.findall(text):
                yield path, line, cited


def _exists(cited, near):
    if cited.startswith(_EXTERNAL):
        return True
    return any((base / cited).exists() for base in [near, *_ROOTS])


def test_files_cited_in_the_code_exist():
    citations = list(_cited_in_code())
    assert len(citations) > 20, "the scan found almost no citations: is it broken?"
    missing = [
        f"{path.relative_to(ROOT)}:{line} cites {cited}"
        for path, line, cited in citations
        if not _exists(cited, path.parent)
    ]
    assert not missing, "Cited files that do not exist:\n" + "\n".join(missing)


def _slug(heading):
    """GitHub's anchor for a Markdown heading: lower case, punctuation
    other than "-" and "_" dropped, spaces as "-"."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _markdown_links(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links, not code
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_and_cited_paths_exist(path):
    problems = []
    for link in _markdown_links(path):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target) if target else path
        if not resolved.exists():
            problems.append(f"link to {link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"link to {link}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    for cited in _PATH.findall(path.read_text()):
        if not _exists(cited, path.parent):
            problems.append(f"cites {cited}: no such file")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move "
        "the details into a page of docs/ that it links."
    )
    assert "make test" in "\n".join(lines)
