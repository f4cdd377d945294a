"""Writes docs/api.md, the API reference, from the public names' docstrings.

The reference is generated so that it cannot drift from the code:
`tests/test_docs.py` regenerates it in memory and fails when docs/api.md
differs. After changing a public signature or docstring, run

    python scripts/api_reference.py

from the repository root (any Keras backend gives the same page). Only the
standard library's `inspect` is used: no documentation tool to install.
"""

import importlib
import inspect
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"

# Not exported, but what the public functions return: documented beside them.
RETURNED = {
    "Sensitivities": "keras_neuron_sensitivity.engine.summary",
    "NeuronActivity": "keras_neuron_sensitivity.health",
    "LoggedRun": "keras_neuron_sensitivity.report",
}

SECTIONS = ("Args", "Arguments", "Returns", "Raises", "Attributes", "Example", "Examples")
# Sections whose entries are `name: text`, written as a list.
LISTED = ("Args", "Arguments", "Raises", "Attributes")

HEADER = """# API reference

Generated from the docstrings by `scripts/api_reference.py`; do not edit by
hand (`tests/test_docs.py` fails when this page and the docstrings differ).
Every public name is imported from `keras_neuron_sensitivity`. For the
concepts behind them, see [the user guide](README.md).
"""


def render():
    """The reference as one Markdown string."""
    sys.path.insert(0, str(ROOT))
    package = importlib.import_module("keras_neuron_sensitivity")
    public = [(name, getattr(package, name)) for name in package.__all__]
    returned = [
        (name, getattr(importlib.import_module(module), name))
        for name, module in sorted(RETURNED.items())
    ]
    parts = [HEADER, "## Contents\n"]
    parts += [f"- [`{name}`](#{_anchor(name)})" for name, _ in public]
    parts.append("\nReturned by them:\n")
    parts += [f"- [`{name}`](#{_anchor(name)})" for name, _ in returned]
    for name, obj in public + returned:
        parts.append(_entry(name, obj))
    return "\n".join(parts).rstrip("\n") + "\n"


def _entry(name, obj):
    lines = [f"\n## `{name}`\n"]
    if inspect.isclass(obj):
        lines.append(_code(f"class {name}{_signature(obj)}"))
        lines.append(_docstring(obj))
        for method_name, method in _methods(obj):
            lines.append(f"\n### `{name}.{method_name}`\n")
            if isinstance(method, property):
                lines.append(_code(f"{name}.{method_name}  # property"))
                lines.append(_docstring(method.fget))
            else:
                lines.append(_code(f"{name}.{method_name}{_signature(method, drop_self=True)}"))
                lines.append(_docstring(method))
    else:
        lines.append(_code(f"{name}{_signature(obj)}"))
        lines.append(_docstring(obj))
    return "\n".join(line for line in lines if line is not None)


def _methods(cls):
    """The public methods and properties a class defines itself (not the
    Keras callback hooks, `on_*`, which Keras calls)."""
    for method_name, member in cls.__dict__.items():
        if method_name.startswith("_") or method_name.startswith("on_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            if (member.fget if isinstance(member, property) else member).__doc__:
                yield method_name, member


def _signature(obj, drop_self=False):
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    if drop_self:
        parameters = list(signature.parameters.values())
        if parameters and parameters[0].name in ("self", "cls"):
            signature = signature.replace(parameters=parameters[1:])
    return str(signature)


def _code(text):
    return f"```python\n{text}\n```\n"


def _anchor(name):
    # GitHub's heading anchors: lower case, punctuation dropped.
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


def _docstring(obj):
    """A Keras-style docstring as Markdown: its sections in bold, the
    entries of `Args:` and the like as a list, examples as code."""
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    out, section, block = [], None, []

    def flush_block():
        if not block:
            return
        text = "\n".join(_dedent(block)).strip("\n")
        out.append(_fenced_examples(text))
        block.clear()

    for line in doc.split("\n"):
        header = re.fullmatch(r"(\w+):\s*", line)
        if header and header.group(1) in SECTIONS:
            flush_block()
            section = header.group(1)
            out.append(f"**{section}:**\n")
            continue
        if section is not None and line and not line.startswith(" "):
            # Back to prose (a section runs while its lines are indented),
            # except inside an example, which may be written unindented.
            if not section.startswith("Example"):
                section = None
        if section in LISTED:
            item = re.match(r"    (\S[^:]*?):(\s|$)(.*)", line)
            if item and not line.startswith("     "):
                out.append(f"- `{item.group(1)}`: {item.group(3).strip()}")
            elif line.strip():
                out[-1] += " " + line.strip()
            else:
                out.append("")
        elif section is not None:
            block.append(line)
        else:
            out.append(line)
    flush_block()
    text = "\n".join(out)
    text = re.sub(r"(\n- [^\n]*)\n(?=\*\*)", r"\1\n\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def _dedent(lines):
    indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(indents, default=0)
    return [x[cut:] for x in lines]


def _fenced_examples(text):
    """Prose, fenced code and `>>>` sessions: the sessions fenced as code."""
    out, session, fenced = [], [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (line.startswith((">>>", "...")) or (session and line.strip())):
            session.append(line)
            continue
        if session:
            out.append("```pycon\n" + "\n".join(session) + "\n```")
            session = []
        out.append(line)
    if session:
        out.append("```pycon\n" + "\n".join(session) + "\n```")
    return "\n".join(out) + "\n"


def main():
    OUTPUT.write_text(render())
    print(f"Wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
