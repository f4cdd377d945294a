"""Where the exact sweep's time goes: per phase and per layer family.

For each model (keras.applications at 32x32x3, weights=None, 10 classes, or
docs/benchmarks.md's small CNN) and each `wrt`, in a fresh process:

  build       building the sweep (its plan is made in the first call)
  first call  planning, tracing and the first run together (the sweep no
              longer times its own phases: benchmarks keep no hooks in the
              package, issue 22, so "tracing" and "first run" print "-")
  forward     the compiled forward pass, in a steady call
  reverse     the compiled reverse sweep, in a steady call
  per-row     the part of `reverse` spent in the generic rule's per-row
              gradient loops

Forward, reverse and the per-family split come from TensorFlow's profiler:
the sweep names every layer's ops `kns_forward/<LayerClass>` and
`kns_reverse/<LayerClass>`; the op times of one steady call are summed per
family and scaled to that call's wall time (ops of one call overlap on two
cores, so op time is shared out, not added up). Every figure is also given
in training steps: one `train_on_batch` of batch 32 of the same model,
measured in the same process after a warm-up. The rule that served each
layer family is listed, and the peak RSS of the process.

    .venv/bin/python benchmarks/profile_exact.py                       # all, ~30 min
    .venv/bin/python benchmarks/profile_exact.py --models mobilenetv2 --wrt inputs
    .venv/bin/python benchmarks/profile_exact.py --models cnn --batch 64

Progress goes to stderr, the tables to stdout.
"""

import argparse
import collections
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import cpu_model, loadavg

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "RESULT_JSON "
MODELS = {
    "mobilenetv2": "MobileNetV2 (alpha 0.35)",
    "efficientnetb0": "EfficientNetB0",
    "resnet50": "ResNet50",
    "cnn": "CNN Conv32-Conv64-pool-Dense128-Dense10",
}


def build(name):
    import keras

    keras.utils.set_random_seed(0)
    apps = keras.applications
    if name == "cnn":
        layers = keras.layers
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(32, 3, activation="relu", name="conv1"),
                layers.Conv2D(64, 3, activation="relu", name="conv2"),
                layers.MaxPooling2D(2, name="pool"),
                layers.Flatten(name="flatten"),
                layers.Dense(128, activation="relu", name="dense1"),
                layers.Dense(10, name="dense2"),
            ]
        )
        return model, (28, 28, 1)
    shape = (32, 32, 3)
    if name == "mobilenetv2":
        model = apps.MobileNetV2(input_shape=shape, alpha=0.35, weights=None, classes=10)
    elif name == "efficientnetb0":
        model = apps.EfficientNetB0(input_shape=shape, weights=None, classes=10)
    elif name == "resnet50":
        model = apps.ResNet50(input_shape=shape, weights=None, classes=10)
    else:
        raise ValueError(name)
    return model, shape


def training_step_seconds(model, shape, repeats=10):
    """Median `train_on_batch` time of a copy of the model, batch 32."""
    import keras
    import numpy as np

    copy = keras.models.clone_model(model)
    copy.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.RandomState(0).uniform(size=(32, *shape)).astype("float32")
    y = np.random.RandomState(1).randint(0, int(copy.outputs[0].shape[-1]), 32)
    for _ in range(3):
        copy.train_on_batch(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copy.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_times(logdir):
    """`{op name: picoseconds}` summed over the executor threads of a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            metadata = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = metadata[event.metadata_id].name
                    if ":" in name and "::" not in name:  # "scope/op:OpType"; not executor events
                        totals[name.split(":")[0]] += event.duration_ps
    return totals


PHASES = {"kns_forward": "forward", "kns_gram": "gram", "kns_reverse": "reverse"}


def family_of(op_name):
    """`(phase, family, per_row)` of an op named under the sweep's scopes."""
    parts = op_name.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in PHASES:
            family = parts[i + 1]
            if family.startswith("cut_"):
                family = "(rows stopping at cuts)"
            elif family == "products":
                family = "(Gram matrix products)"
            elif family == "inputs":
                family = "(norms at the inputs)"
            return PHASES[part], family, "generic_per_row" in parts
    return None, None, False


def worker(opts):
    import numpy as np
    import tensorflow as tf

    from keras_neuron_sensitivity import _batch, probe
    from keras_neuron_sensitivity._computation import model_graph
    from keras_neuron_sensitivity.engine.rules import table
    from keras_neuron_sensitivity.engine.sweep import Sweep

    model, shape = build(opts.model)
    step = training_step_seconds(model, shape)
    x = np.random.RandomState(1).uniform(0, 1, (opts.batch, *shape)).astype("float32")
    graph = model_graph(model, x)
    keys = probe.resolve_layers(graph, None)
    inputs = _batch.standardize(graph, x)
    rss_before = peak_rss_mib()

    start = time.perf_counter()
    sweep = Sweep(graph, keys, (opts.wrt,), opts.budget_mb * 2**20)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    values = sweep(inputs)
    first = time.perf_counter() - start
    timings = dict(getattr(sweep, "timings", {}))
    neurons = sum(int(v.shape[1]) for v in values[opts.wrt].values())
    steady = []
    for _ in range(opts.repeats):
        start = time.perf_counter()
        sweep(inputs)
        steady.append(time.perf_counter() - start)
    steady_s = statistics.median(steady)

    logdir = tempfile.mkdtemp(prefix="kns_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    sweep(inputs)
    profiled_s = time.perf_counter() - start
    tf.profiler.experimental.stop()
    ops = op_times(logdir)
    shutil.rmtree(logdir, ignore_errors=True)

    families = collections.defaultdict(
        lambda: {"forward": 0, "gram": 0, "reverse": 0, "per_row": 0}
    )
    other = 0
    for name, ps in ops.items():
        phase, family, per_row = family_of(name)
        if phase is None:
            other += ps
            if opts.verbose:
                print(f"other op {name}: {ps / 1e12:.3f} s", file=sys.stderr)
            continue
        families[family][phase] += ps
        if per_row:
            families[family]["per_row"] += ps
    total_ps = sum(ops.values()) or 1
    scale = steady_s / total_ps  # seconds of the steady call per op picosecond

    rules = collections.defaultdict(collections.Counter)
    layers = collections.Counter()
    for call in sweep.graph.calls[: max(sweep_targets(sweep, keys)) + 1]:
        family = type(call.layer).__name__
        rules[family][type(table.rule_for(call.layer)).__name__] += 1
        layers[family] += 1

    result = {
        "model": opts.model,
        "wrt": opts.wrt,
        "batch": opts.batch,
        "layers": len(keys),
        "neurons": neurons,
        "step": step,
        "build": build_s,
        "planning": timings.get("planning"),
        "tracing": timings.get("tracing"),
        "first": first,
        "steady": steady_s,
        "steady_all": steady,
        "profiled": profiled_s,
        "other_ops": other * scale,
        "families": {
            f: {k: v * scale for k, v in d.items()} for f, d in families.items()
        },
        "rules": {f: dict(c) for f, c in rules.items()},
        "family_layers": dict(layers),
        "rss_peak_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
        "budget_mb": opts.budget_mb,
        "checksum": float(sum(np.sum(v) for v in values[opts.wrt].values())),
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


def sweep_targets(sweep, keys):
    index = {call.key: i for i, call in enumerate(sweep.graph.calls)}
    return [index[key] for key in keys]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(model, wrt, opts):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", "--model", model,
        "--wrt", wrt, "--batch", str(opts.batch_for(model)),
        "--repeats", str(opts.repeats), "--budget-mb", str(opts.budget_mb),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    print(f"[{model} {wrt}] ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": model, "wrt": wrt, "error": f"timed out after {opts.timeout:.0f} s"}
    print(f"[{model} {wrt}] {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(done.stderr.strip().splitlines()[-10:])
    return {"model": model, "wrt": wrt, "error": f"exit {done.returncode}: {tail}"}


def table(r):
    if "error" in r:
        return f"{MODELS[r['model']]}, wrt={r['wrt']}: ERROR {r['error']}"
    step = r["step"]

    def row(label, seconds, note=""):
        if seconds is None:
            return f"  {label:<44} {'-':>9} {'-':>8}  {note}"
        return f"  {label:<44} {seconds:>9.2f} {seconds / step:>8.0f}  {note}"

    lines = [
        f"{MODELS[r['model']]}, B={r['batch']}, wrt={r['wrt']}: {r['layers']} layers, "
        f"{r['neurons']:,} neurons; one training step (batch 32) = {step * 1e3:.1f} ms",
        f"  {'phase':<44} {'seconds':>9} {'steps':>8}",
    ]
    planning = r["planning"] if r["planning"] is not None else None
    tracing = r["tracing"]
    lines.append(row("first call, all included", r["first"]))
    lines.append(row("  planning (sweep built + plan)", (planning or 0) + r["build"]))
    lines.append(row("  tracing", tracing))
    if planning is not None and tracing is not None:
        rest = r["first"] - planning - tracing
        lines.append(row("  first run (graph optimization + one run)", rest))
    lines.append(row("steady call", r["steady"], f"(median of {len(r['steady_all'])})"))
    forward = sum(f["forward"] for f in r["families"].values())
    grams = sum(f.get("gram", 0) for f in r["families"].values())
    reverse = sum(f["reverse"] for f in r["families"].values())
    per_row = sum(f["per_row"] for f in r["families"].values())
    lines.append(row("  forward", forward))
    lines.append(row("  Gram matrices at cuts", grams))
    lines.append(row("  reverse", reverse))
    lines.append(row("    of which generic-rule per-row loops", per_row))
    lines.append(row("  outside the sweep's scopes (host, copies)", r["other_ops"]))
    lines.append(
        f"  peak RSS {r['rss_peak_mib']:,.0f} MiB ({r['rss_before_mib']:,.0f} MiB before the "
        f"sweep, model and TensorFlow included; memory_budget_mb={r['budget_mb']})"
    )
    lines.append("")
    lines.append(
        f"  {'layer family':<22} {'layers':>6}  {'rule':<26} {'forward s':>9} "
        f"{'gram s':>9} {'reverse s':>9} {'per-row s':>9} {'steps':>7} {'share':>6}"
    )
    total = r["steady"] or 1

    def spent(t):
        return t["forward"] + t.get("gram", 0) + t["reverse"]

    for family, t in sorted(r["families"].items(), key=lambda kv: -spent(kv[1])):
        rules = ", ".join(
            f"{name}" + (f" x{n}" if len(r["rules"].get(family, {})) > 1 else "")
            for name, n in r["rules"].get(family, {}).items()
        )
        seconds = spent(t)
        lines.append(
            f"  {family:<22} {r['family_layers'].get(family, 0):>6}  {rules:<26} "
            f"{t['forward']:>9.3f} {t.get('gram', 0):>9.3f} {t['reverse']:>9.3f} {t['per_row']:>9.3f} "
            f"{seconds / step:>7.1f} {100 * seconds / total:>5.1f}%"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenetv2,efficientnetb0,resnet50")
    parser.add_argument("--wrt", default="weights,inputs")
    parser.add_argument("--batch", type=int, default=None, help="probe size (default 4; cnn 64)")
    parser.add_argument("--repeats", type=int, default=2, help="steady calls timed after the first")
    parser.add_argument("--budget-mb", type=int, default=1024, help="memory_budget_mb")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    parser.add_argument("--verbose", action="store_true", help="list ops outside the sweep's scopes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts)
        return
    opts.batch_for = lambda m: opts.batch or (64 if m == "cnn" else 4)

    print("profile_exact.py: where the exact sweep's time goes")
    print(f"  machine: {cpu_model()}, {os.cpu_count()} cores; load average at start: {loadavg()}")
    print("  steps = seconds / one training step of the same model (batch 32, Adam, after warm-up)")
    print(flush=True)
    start = time.perf_counter()
    for model in opts.models.split(","):
        for wrt in opts.wrt.split(","):
            print(table(run_worker(model.strip(), wrt.strip(), opts)))
            print(flush=True)
    print(f"Total wall time: {time.perf_counter() - start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
