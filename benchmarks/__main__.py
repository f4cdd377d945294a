"""`python -m benchmarks list | run NAME [--quick] | tables`: see docs/benchmarks.md."""

import argparse
import ast
import json
import pathlib
import sys

from benchmarks import _harness


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the benchmarks and the studies")
    tables = sub.add_parser("tables", help="regenerate the docs' tables from benchmarks/results/")
    tables.add_argument("--root", default=str(_harness.REPO), help=argparse.SUPPRESS)
    run = sub.add_parser("run", help="run one benchmark and store its JSON")
    run_sub = run.add_subparsers(dest="name", required=True)
    for name in _harness.BENCHMARKS:
        bench = _harness.module(name)
        p = run_sub.add_parser(name, help=bench.__doc__.splitlines()[0])
        p.add_argument("--quick", action="store_true", help="the small setting")
        p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
        p.add_argument("--results", default=str(_harness.RESULTS), help=argparse.SUPPRESS)
        bench.arguments(p)
    child = sub.add_parser("child", help=argparse.SUPPRESS)
    child.add_argument("name")
    child.add_argument("case")
    args = parser.parse_args(argv)

    if args.command == "list":
        here = pathlib.Path(__file__).parent
        studies = sorted((here / "studies").glob("[!_]*.py"))
        width = max(len(name) for name in [*_harness.BENCHMARKS, *(p.stem for p in studies)]) + 2
        for name in _harness.BENCHMARKS:
            print(f"{name:<{width}}{_harness.module(name).__doc__.splitlines()[0]}")
        print("\nStudies: one-off, their conclusions in the docs, nothing stored "
              "(run as `python benchmarks/studies/NAME.py`):")
        for path in studies:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            print(f"{path.stem:<{width}}{doc.splitlines()[0] if doc else ''}")
    elif args.command == "run":
        path = _harness.run(args.name, args, args.timeout, args.results)
        print(f"wrote {path}")
        print(_harness.module(args.name).table(json.loads(path.read_text())))
    elif args.command == "tables":
        report = _harness.render_tables(pathlib.Path(args.root))
        for file, (generated, left) in report.items():
            print(f"{file}: generated {', '.join(generated) or '-'}; "
                  f"left alone (no stored result): {', '.join(left) or '-'}")
    elif args.command == "child":
        _harness.child_main(args.name, args.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
