"""The one harness every ported benchmark runs on.

A benchmark is a module of this package with:

    arguments(parser)      its options, beside the harness's `--quick`
    cases(args)            the cases to run: dicts, each run in a child
                           process of its own, with KERAS_BACKEND set to its
                           "backend" (TensorFlow when absent)
    measure(case, emit)    in the child: measures one case and returns a
                           JSON-able dict; `emit(partial)` stores what is
                           measured so far, so a child that dies or is
                           killed keeps it
    table(result) -> str   the Markdown table of a stored result (only the
                           JSON: the docs are regenerated from it)

The harness gives the child processes, one timer (`median_seconds`,
`training_step`: costs are multiples of one training step of the same model
measured in the same process), and the result file:
a JSON file per benchmark under `benchmarks/results/`, with the machine, its load at start and end,
the versions, the git commit and date, the arguments and each case's result.
`render_tables` regenerates every `<!-- table: NAME -->` block of the docs
from those files.
"""

import datetime
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import threading
import time

from benchmarks._machine import cpu_model, median_seconds

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MARK = "@@benchmark-result@@ "  # prefixes the child's result lines on stdout
DISTRIBUTIONS = ("numpy", "keras", "tensorflow", "jax", "jaxlib", "torch", "keras-hub")

# The ported benchmarks, by name; the other scripts in benchmarks/ are run as
# scripts (`list` shows them).
BENCHMARKS = ("backends", "fit_overhead", "transformer_blocks",
              "text_models", "dashboard", "activity_overhead", "fit_overhead_mobilenet",
              "auto_choice", "estimator", "profile_exact", "compare_methods")


def module(name):
    """The benchmark module `name`."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}.")
    return importlib.import_module(f"benchmarks.{name}")


# ---------------------------------------------------------------------------
# The timer


def training_step(model, x, y, repeats=30, warmup=3):
    """Seconds of one `model.train_on_batch(x, y)` (the model is compiled),
    median of `repeats` after `warmup`; the weights are restored after.

    `train_on_batch` returns host values, so each call is synchronized on
    every backend.
    """
    saved = model.get_weights()
    seconds = median_seconds(lambda: model.train_on_batch(x, y), repeats, warmup)
    model.set_weights(saved)
    return seconds


def classifier_step(model, from_logits, repeats=30, seed=7):
    """`training_step` of a classifier of `benchmarks.models`: compiled with
    Adam and sparse categorical cross-entropy, batch 32 of uniform random
    inputs and labels."""
    import keras
    import numpy as np

    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.0, 1.0, (32, *model.inputs[0].shape[1:])).astype("float32")
    y = rng.randint(0, int(model.outputs[0].shape[-1]), 32).astype("int32")
    return training_step(model, x, y, repeats=repeats)


# ---------------------------------------------------------------------------
# Where it ran


def loadavg():
    """`[1, 5, 15]` minute load averages, or None."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def machine():
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform()}


def versions():
    """The Python version and each installed distribution's, without importing it."""
    out = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _git(*args):
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit():
    """`{"commit", "package_changed"}`: HEAD, and whether the package differs from it."""
    return {"commit": _git("rev-parse", "--short", "HEAD") or "unknown",
            "package_changed": bool(_git("status", "--porcelain", "--", "keras_neuron_sensitivity"))}


# ---------------------------------------------------------------------------
# Child processes


def child_main(name, case_json):
    """In the child: measures one case and prints its result line."""
    case = json.loads(case_json)
    backend = case.get("backend", "tensorflow")
    import keras

    if keras.backend.backend() != backend:
        raise RuntimeError(f"Asked for backend {backend!r}, Keras runs on {keras.backend.backend()!r}.")

    def emit(partial):
        print(MARK + json.dumps({"final": False, "result": partial}), flush=True)

    result = module(name).measure(case, emit)
    print(MARK + json.dumps({"final": True, "result": result}), flush=True)


def run_child(name, case, timeout):
    """Runs one case in a fresh process; `{"status", "wall", "result"}`.

    The status is "ok", "timed out" (killed after `timeout` seconds) or
    "failed" (with the tail of its stderr); a child that stops early keeps
    the last result it emitted.
    """
    env = dict(os.environ, KERAS_BACKEND=case.get("backend", "tensorflow"),
               TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "benchmarks", "child", name, json.dumps(case)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = []

    def forward():  # progress lines, live
        for line in proc.stderr:
            err.append(line.rstrip("\n"))
            if line.startswith("  ["):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    out = []
    out_reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    out_reader.start()
    status = "ok"
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timed out"
        proc.kill()  # our own child, by its handle
        proc.wait()
    out_reader.join(10)
    reader.join(10)
    last = None
    for line in out:
        if line.startswith(MARK):
            last = json.loads(line[len(MARK):])
    entry = {"case": case, "status": status, "wall": round(time.perf_counter() - start, 1),
             "result": last["result"] if last else None}
    if status == "ok" and (last is None or not last["final"]):
        entry["status"] = "failed"
    if entry["status"] != "ok":
        entry["error"] = "\n".join(line for line in err if not line.startswith("  ["))[-1500:]
    return entry


def progress(message):
    """A progress line from a child (the parent shows it)."""
    print(f"  [{os.environ.get('KERAS_BACKEND', '?')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Running and storing


def run(name, args, timeout, results_dir=RESULTS):
    """Runs every case of benchmark `name` one after another; writes and
    returns the result file's path."""
    bench = module(name)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = loadavg()
    cases = []
    for case in bench.cases(args):
        print(f"{name}: {json.dumps(case)} ...", file=sys.stderr, flush=True)
        entry = run_child(name, case, timeout)
        print(f"{name}: {entry['status']} in {entry['wall']:.0f} s", file=sys.stderr, flush=True)
        if entry.get("error"):
            print(entry["error"], file=sys.stderr)
        cases.append(entry)
    record = {
        "benchmark": name,
        "date": started.strftime("%Y-%m-%d"),
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **commit(),
        "machine": machine(),
        "load": {"start": load_start, "end": loadavg()},
        "versions": versions(),
        "arguments": {k: v for k, v in sorted(vars(args).items()) if k not in ("command", "name", "timeout", "results")},
        "cases": cases,
    }
    results_dir = pathlib.Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------
# Tables

# `<!-- table: NAME -->` is NAME's `table(record)`; `<!-- table: NAME:VIEW -->`
# another rendering of the same result, `VIEWS[VIEW](record)` of NAME's
# module (a sentence for the README, say).
BLOCK = re.compile(r"(?P<open><!-- table: (?P<name>[\w-]+)(?::(?P<view>\w+))? -->\n)(?P<body>.*?)"
                   r"(?P<close><!-- /table -->)", re.S)


def provenance(record):
    """The line under every generated table: where its numbers come from."""
    load = record["load"]
    loads = " to ".join(f"{v[0]:.1f}" for v in (load["start"], load["end"]) if v) or "unknown"
    mode = "quick" if record["arguments"].get("quick") else "full"
    changed = " plus uncommitted package changes" if record.get("package_changed") else ""
    return (f"Generated by `python -m benchmarks tables` from `benchmarks/results/{record['benchmark']}.json`: "
            f"{mode} run of {record['date']} at commit {record['commit']}{changed}, "
            f"{record['machine']['cores']} cores, load {loads}.")


def render(text, results_dir=RESULTS):
    """`(new text, generated names, names left alone)` for one Markdown file."""
    generated, left = [], []

    def replace(match):
        name = match["name"]
        path = pathlib.Path(results_dir) / f"{name}.json"
        if name not in BENCHMARKS or not path.exists():
            left.append(name)
            return match.group(0)
        record = json.loads(path.read_text())
        generated.append(name)
        bench = module(name)
        draw = bench.table if match["view"] is None else bench.VIEWS[match["view"]]
        body = draw(record).strip("\n") + "\n\n" + provenance(record) + "\n"
        return match["open"] + body + match["close"]

    return BLOCK.sub(replace, text), generated, left


def markdown_files(root=REPO):
    root = pathlib.Path(root)
    return sorted(root.glob("docs/*.md")) + [p for p in [root / "README.md"] if p.exists()]


def render_tables(root=REPO, results_dir=None):
    """Rewrites every marked table under `root` from the stored results;
    `{file: (generated, left alone)}` for the files that have tables."""
    results_dir = results_dir or pathlib.Path(root) / "benchmarks" / "results"
    report = {}
    for path in markdown_files(root):
        text = path.read_text()
        new, generated, left = render(text, results_dir)
        if generated or left:
            report[str(path.relative_to(root))] = (generated, left)
        if new != text:
            path.write_text(new)
    return report


# ---------------------------------------------------------------------------
# Formatting shared by the tables


def steps(seconds, step):
    """`seconds` as a multiple of `step`, to two or three significant figures."""
    if seconds is None or not step:
        return "-"
    ratio = seconds / step
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.1f}" if ratio < 100 else f"{ratio:,.0f}"


def duration(seconds):
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
