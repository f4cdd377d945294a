"""The engine's time on each Keras backend, in training steps of that backend.

`neuron_sensitivity` runs on TensorFlow (the rule table's sweep), and on JAX
and PyTorch (before the one engine, the former native engine: exact = one VJP per neuron and sample,
vectorized over neurons; estimate = one JVP per probe). This script times it
on each backend for four models:

  mlp        MLP 64-128-64-10 (the digits MLP, softmax output), probe of the
             first 128 samples of sklearn's load_digits (/16)
  mlp784     MLP 784-512-256-128-10 (logits), probe of 64 uniform samples
  cnn        Conv2D(32,3) -> Conv2D(64,3) -> MaxPooling2D -> Flatten ->
             Dense(128) -> Dense(10) (logits) on 28x28x1, probe of 16
  mobilenet  keras.applications.MobileNetV2(input_shape=(32, 32, 3),
             alpha=0.35, weights=None, classes=10), probe of 4 for exact
             (1 on JAX and PyTorch, where exact is one backward pass per
             neuron and sample: ~20,000 neurons), 32 for the estimate

For each model, wrt ("weights", "inputs") and method ("exact"; "estimate"
with num_probes=32, seed=0), reduction "mean", default layers:

  first     the first call on the model: tracing / compilation included
            (the engine is warmed up on a throwaway model before, so one-time
            process costs such as imports are in no row)
  steady    the median of later calls (--repeats; fewer when they would not
            fit in --max-seconds; none when the first call took over 120 s)
  (steps)   either time / one training step of the same model on the same
            backend, in the same process: model.train_on_batch on a batch of
            32 uniform samples with random labels (Adam, sparse categorical
            cross-entropy), the median of 30 single calls after a warm-up
            and 30 more after the engine's calls (both shown: on a busy
            machine they can differ, PyTorch's most); the machine is shared
            and absolute times drift, ratios less

and which method method="auto" picks for each wrt (with the predicted
exact / estimate cost ratio it decides on; computed on a second instance of
the model so that it warms nothing the timed calls use).

Each backend runs in a fresh subprocess of this script (Keras picks its
backend at import): `--child BACKEND MODEL` measures one model and prints its
result as one JSON line to stdout (again after every run, the last line the
final one, so that a child that dies keeps what it measured). Every engine
call in the child has a watchdog of --max-seconds: a call that runs longer is
reported "timed out" and the child stops there (the slow measurements come
last); a call that kills the process (a crash in the backend) is reported
"crashed" with the signal. Either way the parent starts a fresh child for
the runs left, whose rows are relative to that process's own training step.
The parent also kills a child that runs past --timeout. Each child records
the package's commit (and a hash of any uncommitted diff) when it starts; the
run ends with a warning when they differ.

    .venv/bin/python benchmarks/backends.py --quick             # mlp and cnn, 3 repeats, ~2 min when quiet
    .venv/bin/python benchmarks/backends.py --models all        # all four models, ~40 min at load 3-5
    .venv/bin/python benchmarks/backends.py --backends jax,torch --models mobilenet --max-seconds 300

Progress goes to stderr, the tables to stdout.
"""

import argparse
import importlib.metadata
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
MODELS = {
    "mlp": "MLP 64-128-64-10 (digits)",
    "mlp784": "MLP 784-512-256-128-10",
    "cnn": "small CNN 28x28x1: Conv2D(32,3) Conv2D(64,3) MaxPool Dense(128) Dense(10)",
    "mobilenet": "MobileNetV2 alpha=0.35, 32x32x3, 10 classes",
}
QUICK_MODELS = ("mlp", "cnn")
# Probe sizes: (estimate, exact per backend).
PROBE = {
    "mlp": (128, {"tensorflow": 128, "jax": 128, "torch": 128}),
    "mlp784": (64, {"tensorflow": 64, "jax": 64, "torch": 64}),
    "cnn": (16, {"tensorflow": 16, "jax": 16, "torch": 16}),
    "mobilenet": (32, {"tensorflow": 4, "jax": 1, "torch": 1}),
}
NUM_PROBES = 32
SEED = 0
TRAIN_BATCH = 32
NO_REPEAT_AFTER = 120.0  # seconds: a first call slower than this is not repeated
WRTS = ("weights", "inputs")
METHODS = ("exact", "estimate")


# =============================================================================
# Child: one backend, one model
# =============================================================================


def progress(message):
    print(f"  [{os.environ.get('KERAS_BACKEND', '?')}] {message}", file=sys.stderr, flush=True)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build(name):
    """`(model, probe, from_logits)`: the model (seed 0) and its probe for
    the estimate (the exact probe is its first rows)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    batch = PROBE[name][0]
    rng = np.random.RandomState(1)
    layers = keras.layers
    if name == "mlp":
        from sklearn.datasets import load_digits

        model = keras.Sequential([
            keras.Input((64,)),
            layers.Dense(128, activation="relu", name="hidden_1"),
            layers.Dense(64, activation="relu", name="hidden_2"),
            layers.Dense(10, activation="softmax", name="output"),
        ])
        x = (load_digits().data[:batch] / 16.0).astype("float32")
        return model, x, False
    if name == "mlp784":
        model = keras.Sequential([
            keras.Input((784,)),
            layers.Dense(512, activation="relu", name="dense1"),
            layers.Dense(256, activation="relu", name="dense2"),
            layers.Dense(128, activation="relu", name="dense3"),
            layers.Dense(10, name="dense4"),
        ])
        return model, rng.uniform(0.0, 1.0, (batch, 784)).astype("float32"), True
    if name == "cnn":
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu", name="conv1"),
            layers.Conv2D(64, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense1"),
            layers.Dense(10, name="dense2"),
        ])
        return model, rng.uniform(0.0, 1.0, (batch, 28, 28, 1)).astype("float32"), True
    if name == "mobilenet":
        model = keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
        )
        return model, rng.uniform(0.0, 1.0, (batch, 32, 32, 3)).astype("float32"), False
    raise ValueError(name)


class Trainer:
    """Times `model.train_on_batch` (batch 32, Adam); restores the weights."""

    def __init__(self, model, x, from_logits):
        import keras
        import numpy as np

        self.model = model
        model.compile(
            optimizer=keras.optimizers.Adam(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        )
        rng = np.random.RandomState(7)
        classes = int(model.outputs[0].shape[-1])
        self.x = rng.uniform(0.0, 1.0, (TRAIN_BATCH, *x.shape[1:])).astype("float32")
        self.y = rng.randint(0, classes, TRAIN_BATCH).astype("int32")
        self.first = None

    def _one(self):
        start = time.perf_counter()
        self.model.train_on_batch(self.x, self.y)  # returns host floats: synchronized
        return time.perf_counter() - start

    def times(self, warmup=3, calls=30):
        """`calls` single steps after `warmup` (the same count every time, so
        that a pooled median weighs each measurement alike)."""
        saved = self.model.get_weights()
        if self.first is None:
            self.first = self._one()  # traces / compiles the train step
        for _ in range(warmup):
            self._one()
        times = [self._one() for _ in range(calls)]
        self.model.set_weights(saved)
        return times


def warm_up_engine():
    """Both methods and wrt on a throwaway Dense model: one-time process
    costs (imports, the backend's autodiff machinery) in no timed call."""
    import keras
    import numpy as np

    from keras_neuron_sensitivity import neuron_sensitivity

    keras.utils.set_random_seed(123)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)
    ])
    x = np.random.RandomState(0).uniform(size=(4, 8)).astype("float32")
    for wrt in WRTS:
        for method in METHODS:
            neuron_sensitivity(model, x, wrt=wrt, method=method, num_probes=4, seed=0)


def auto_picks(name):
    """`{wrt: {probe B: {"pick", "ratio"}}}` on a second instance of the model."""
    from keras_neuron_sensitivity import _computation
    from keras_neuron_sensitivity.engine import cost

    model, x, _ = build(name)
    sizes = sorted({PROBE[name][0], PROBE[name][1][os.environ["KERAS_BACKEND"]]})
    out = {}
    for wrt in WRTS:
        out[wrt] = {}
        for b in sizes:
            problem = _computation.prepare(model, x[:b], wrt=(wrt,), layers=None)
            costs = cost.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, NUM_PROBES)
            pick = _computation.choose(problem, wrt, "auto", NUM_PROBES)
            out[wrt][str(b)] = {"pick": pick, "ratio": costs["exact"] / costs["estimate"]}
    neurons = None
    try:
        from keras_neuron_sensitivity.engine.replay import Replay

        problem = _computation.prepare(model, x[:1], wrt=("weights",), layers=None)
        replay = Replay(problem.graph, problem.keys)
        values = replay.run(problem.inputs)
        neurons = [len(problem.keys), sum(int(v.shape[-1]) for v in replay.target_outputs(values))]
    except Exception:  # noqa: BLE001 - informative only
        pass
    return out, neurons


def loadavg():
    from _machine import loadavg as read

    return read()


class Watchdog:
    """Prints the child's result line, and stops the child when one engine
    call runs past `seconds`: records it as timed out, marks the rest not
    run, prints the final line, exits.

    The result is also printed after every run with "final": false, so that
    the parent keeps what was measured when the child dies (a crash in the
    backend): it reads the last line.
    """

    def __init__(self, result, seconds):
        self.result = result
        self.seconds = seconds
        self.lock = threading.Lock()
        self.timer = None
        self.emitted = False

    def arm(self, run, what):
        self.timer = threading.Timer(self.seconds, self._fire, args=(run, what))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self):
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _fire(self, run, what):
        with self.lock:
            if self.timer is None or self.emitted:
                return
            run["status"] = "timed out"
            run["note"] = f"{what} still running after {self.seconds:.0f} s (--max-seconds)"
            for other in self.result["runs"]:
                if other.get("status") in ("pending", "running") and other is not run:
                    other["status"] = "not run"
                    other["note"] = "not run: the child stopped at an earlier time-out"
            self.result["rss_mib"] = peak_rss_mib()
            self.result["load_end"] = loadavg()
            self._emit()
        os._exit(0)

    def snapshot(self):
        with self.lock:
            if not self.emitted:
                print(json.dumps({**self.result, "final": False}), flush=True)

    def emit(self):
        with self.lock:
            if not self.emitted:
                self._emit()

    def _emit(self):
        self.emitted = True
        print(json.dumps({**self.result, "final": True}), flush=True)


def measure(run, call, opts, watchdog):
    """First call, then up to opts.repeats later calls within the budget."""
    watchdog.arm(run, "the first call")
    start = time.perf_counter()
    call()
    run["first"] = time.perf_counter() - start
    watchdog.disarm()
    times = []
    if run["first"] > NO_REPEAT_AFTER:
        run["note"] = f"not repeated (the first call took over {NO_REPEAT_AFTER:.0f} s)"
    else:
        # The first call bounds a later one (it adds tracing): stop before the
        # next one could take the total past --max-seconds.
        while len(times) < opts.repeats and sum(times) + (times[-1] if times else run["first"]) <= opts.max_seconds:
            watchdog.arm(run, f"later call {len(times) + 1}")
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            watchdog.disarm()
        if not times:
            run["note"] = f"not repeated (a later call would not fit in --max-seconds {opts.max_seconds:.0f})"
        elif len(times) < opts.repeats:
            run["note"] = f"{len(times)} later calls (the {opts.max_seconds:.0f} s budget)"
    run["times"] = times
    run["steady"] = statistics.median(times) if times else None
    run["status"] = "ok"


def child(opts):
    backend, name = opts.child
    result = {
        "backend": backend, "model": name, "status": "ok", "runs": [], "load_start": loadavg(),
        "package": package_version(),  # at the child's start, when it imports it
    }
    watchdog = Watchdog(result, opts.max_seconds)
    try:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeError(f"asked for {backend!r}, Keras runs on {keras.backend.backend()!r}")
        from keras_neuron_sensitivity import neuron_sensitivity

        result["versions"] = {"keras": keras.__version__}
        progress(f"{name}: warm-up of the engine on a throwaway model")
        warm_up_engine()
        progress(f"{name}: auto's picks (on a second instance of the model)")
        try:
            result["auto"], result["neurons"] = auto_picks(name)
        except Exception:  # noqa: BLE001 - reported, the timings go on
            result["auto_error"] = tail(traceback.format_exc())
        model, x, from_logits = build(name)
        result["params"] = int(sum(math.prod(v.shape) for v in model.trainable_weights))
        trainer = Trainer(model, x, from_logits)
        progress(f"{name}: training step")
        before = trainer.times()
        result["step_first"] = trainer.first
        # Until the second measurement (a time-out stops the child before it).
        result["step"] = result["step_before"] = result["step_after"] = statistics.median(before)
        result["jit_compile"] = str(getattr(model, "jit_compile", "?"))

        estimate_b, exact_bs = PROBE[name]
        # The slow ones last: a time-out stops the child (the parent starts
        # another for what is left).
        plan = [(w, "estimate", estimate_b) for w in WRTS] + [(w, "exact", exact_bs[backend]) for w in WRTS[::-1]]
        if opts.only:
            plan = [p for p in plan if f"{p[0]}:{p[1]}" in opts.only.split(",")]
        runs = [{"wrt": w, "method": m, "B": b, "status": "pending"} for w, m, b in plan]
        result["runs"] = runs
        for run in runs:
            progress(f"{name}: wrt={run['wrt']} method={run['method']} B={run['B']}")
            run["status"] = "running"
            watchdog.snapshot()
            probe = x[: run["B"]]

            def call(run=run, probe=probe):
                s = neuron_sensitivity(
                    model, probe, wrt=run["wrt"], method=run["method"],
                    num_probes=NUM_PROBES, seed=SEED, reduction="mean",
                )
                if s.method != run["method"]:
                    raise RuntimeError(f"asked for {run['method']!r}, got {s.method!r}")

            try:
                measure(run, call, opts, watchdog)
            except Exception:  # noqa: BLE001 - reported per row
                watchdog.disarm()
                run["status"] = "error"
                run["note"] = tail(traceback.format_exc())
            watchdog.snapshot()
            progress(
                f"{name}: wrt={run['wrt']} method={run['method']}: {run['status']}, first "
                f"{run.get('first', float('nan')):.3f} s, steady {run.get('steady') or float('nan'):.4f} s"
            )
        progress(f"{name}: training step again")
        after = trainer.times()
        result["step_before"] = statistics.median(before)
        result["step_after"] = statistics.median(after)
        result["step"] = statistics.median(before + after)
        result["step_calls"] = len(before) + len(after)
    except Exception:  # noqa: BLE001 - the parent reports it
        watchdog.disarm()
        result["status"] = "error"
        result["error"] = tail(traceback.format_exc())
    result["rss_mib"] = peak_rss_mib()
    result["load_end"] = loadavg()
    watchdog.emit()


def package_version():
    """The package's commit, with a hash of its uncommitted diff if any: the
    children import it one after another, and it may change in between."""
    import hashlib

    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", os.path.dirname(HERE), *args], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", "keras_neuron_sensitivity")
    return commit + (f"+diff:{hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else "")


def tail(text, lines=6):
    return "\n".join(text.strip().splitlines()[-lines:])


# =============================================================================
# Parent
# =============================================================================


def run_backend(backend, name, opts):
    """One child; after a time-out, another for the runs it left (each run
    keeps the training step of its own process)."""
    result = run_child(backend, name, opts)
    for run in result["runs"]:
        run["step"] = result.get("step")
    while True:
        left = [r for r in result["runs"] if r["status"] == "not run"]
        if not left or result["status"] != "ok":
            return result
        print(f"{name} on {backend}: a fresh child for the {len(left)} runs left after a time-out or a crash", file=sys.stderr, flush=True)
        more = run_child(backend, name, opts, only=[f"{r['wrt']}:{r['method']}" for r in left])
        result["wall"] += more["wall"]
        done = {(r["wrt"], r["method"]): r for r in more["runs"]}
        for i, run in enumerate(result["runs"]):
            new = done.get((run["wrt"], run["method"]))
            if new is not None:
                new["step"] = more.get("step")
                if new["status"] != "not run":
                    new["note"] = (f"in a second process (step {fmt_time(new['step'])}); " + new.get("note", "")).rstrip("; ")
                result["runs"][i] = new
        if more["status"] != "ok" or not more["runs"]:
            why = (more.get("error") or "").strip().splitlines()[-1:]
            for run in result["runs"]:
                if run["status"] == "not run":
                    run["note"] = f"the second process failed: {more['status']}" + (f": {why[0]}" if why else "")
            return result
        if len([r for r in result["runs"] if r["status"] == "not run"]) >= len(left):
            return result  # no progress


def run_child(backend, name, opts, only=None):
    """Runs one child; returns its result dict (status "error"/"timed out"
    with the stderr tail when it printed none)."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("XLA_FLAGS", None)
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", backend, name,
        "--repeats", str(opts.repeats), "--max-seconds", str(opts.max_seconds),
    ] + (["--only", ",".join(only)] if only else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []

    def forward():
        for line in proc.stderr:
            err_lines.append(line.rstrip("\n"))
            if line.startswith("  ["):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    out_chunks = []
    out_reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    out_reader.start()
    timed_out = False
    try:
        proc.wait(timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()  # our own child, by its handle
        proc.wait()
    out_reader.join(10)
    reader.join(10)
    wall = time.perf_counter() - start
    result = None
    for line in reversed("".join(out_chunks).splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if result is not None and not result.get("final", True):
        # The child died (or was killed) during a run: keep what it measured.
        rc = proc.returncode
        how = (f"killed after --timeout {opts.timeout:.0f} s" if timed_out else
               f"the process died: {signal.Signals(-rc).name}" if rc is not None and rc < 0 and -rc in signal.valid_signals()
               else f"the process died: exit code {rc}")
        # What it wrote after its last progress line, without absl's notices.
        since = len(err_lines) - next((i for i, line in enumerate(reversed(err_lines)) if line.startswith("  [")), len(err_lines))
        last = [line for line in err_lines[since:] if line.strip() and not re.match(r"[IWE]\d{4} |WARNING: All log", line)][-4:]
        result["died"] = how + ("\n" + "\n".join(last) if last else "")
        for run in result["runs"]:
            if run["status"] == "running":
                run["status"] = "timed out" if timed_out else "crashed"
                run["note"] = how
            elif run["status"] == "pending":
                run["status"] = "not run"
                run["note"] = "not run: the child died during an earlier run"
    if result is None:
        result = {
            "backend": backend, "model": name, "runs": [],
            "status": "timed out" if timed_out else "error",
            "error": (f"killed after --timeout {opts.timeout:.0f} s\n" if timed_out else
                      f"exit code {proc.returncode}, no result line\n") + "\n".join(err_lines[-8:]),
        }
    result["wall"] = wall
    return result


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_steps(seconds, step):
    if seconds is None or not step:
        return "-"
    ratio = seconds / step
    return f"{ratio:,.2f}" if ratio < 10 else (f"{ratio:,.1f}" if ratio < 1000 else f"{ratio:,.0f}")


def print_model(name, results, opts):
    estimate_b, _ = PROBE[name]
    probe = "the first 128 samples of load_digits (/16)" if name == "mlp" else "uniform samples in [0, 1)"
    first_ok = next((r for r in results if r.get("neurons")), None)
    size = ""
    if first_ok:
        layers, neurons = first_ok["neurons"]
        size = f"; {layers} default layers, {neurons:,} neurons, {first_ok['params']:,} trainable params"
    print(f"Model {name}: {MODELS[name]}; probe of {probe}{size}")
    head = (
        f"  {'backend':<10} {'train step':>10}  {'wrt':<7} {'method':<8} {'probe':>6}  "
        f"{'first':>9} {'(steps)':>9}  {'steady':>9} {'(steps)':>9} {'calls':>5}  note"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        step = r.get("step")
        if r["status"] != "ok" and not r["runs"]:
            print(f"  {r['backend']:<10} {'-':>10}  {r['status'].upper()}:")
            for line in r.get("error", "").splitlines():
                print(f"      {line}")
            continue
        order = {(w, m): i for i, (w, m) in enumerate((w, m) for w in WRTS for m in METHODS)}
        for i, run in enumerate(sorted(r["runs"], key=lambda run: order[(run["wrt"], run["method"])])):
            label = f"B={run['B']}"
            status = run["status"]
            if status == "ok":
                run_step = run.get("step") or step
                cols = (
                    f"{fmt_time(run['first']):>9} {fmt_steps(run['first'], run_step):>9}  "
                    f"{fmt_time(run['steady']):>9} {fmt_steps(run['steady'], run_step):>9} {len(run['times']):>5}"
                )
                note = run.get("note", "")
            else:
                cols = f"{status:>9} {'':>9}  {'':>9} {'':>9} {'':>5}"
                note = run.get("note", "")
            if r["backend"] in ("jax", "torch") and name == "mobilenet" and run["method"] == "exact":
                note = ("B=1, not TensorFlow's 4 (one backward pass per neuron and sample); " + note).rstrip("; ")
            note_lines = note.splitlines() or [""]
            print(
                f"  {r['backend'] if i == 0 else '':<10} {fmt_time(step) if i == 0 else '':>10}  "
                f"{run['wrt']:<7} {run['method']:<8} {label:>6}  {cols}  {note_lines[0]}"
            )
            for line in note_lines[1:]:
                print(f"  {'':<10} {'':>10}      {line}")
        if r.get("died"):
            print(f"  {'':<10} {'':>10}  child: " + r["died"].replace("\n", "\n" + " " * 33))
        if r["status"] != "ok" and r.get("error"):
            print(f"  {'':<10} {'':>10}  child {r['status']}: " + r["error"].replace("\n", "\n" + " " * 26))
    print("  per backend: training step (median of single train_on_batch calls before / after the engine's; "
          "its first call, compile included); method='auto' picks (predicted exact / estimate cost); "
          "child wall time, peak RSS, 1-min load average at its start -> end")
    for r in results:
        parts = []
        if r.get("step"):
            parts.append(
                f"step {fmt_time(r['step'])} ({fmt_time(r['step_before'])} / {fmt_time(r['step_after'])}; "
                f"first {fmt_time(r['step_first'])}; jit_compile={r.get('jit_compile')})"
            )
            spread = max(r["step_before"], r["step_after"]) / min(r["step_before"], r["step_after"])
            if spread > 1.5:
                parts[-1] += f" BEFORE/AFTER DIFFER {spread:.1f}x"
        if r.get("auto"):
            picks = []
            for wrt in WRTS:
                per_b = r["auto"][wrt]
                picks.append(f"{wrt} -> " + ", ".join(
                    f"{v['pick']} ({v['ratio']:.3g}x{', B=' + b if len(per_b) > 1 else ''})" for b, v in per_b.items()
                ))
            parts.append("auto: " + "; ".join(picks))
        elif r.get("auto_error"):
            parts.append("auto: error: " + r["auto_error"].splitlines()[-1])
        parts.append(f"{r['wall']:.0f} s" + (f", {r['rss_mib']:.0f} MiB" if r.get("rss_mib") else ""))
        if r.get("load_start"):
            parts.append(f"load {r['load_start'].split()[0]} -> {r.get('load_end', '?').split()[0]}")
        print(f"    {r['backend']:<10} " + "; ".join(parts))
    print(flush=True)


def print_summary(all_results, backends):
    print("Summary: steady time in training steps of the same backend (first call in brackets)")
    head = f"  {'model':<10} {'wrt':<7} {'method':<8}" + "".join(f" {b:>22}" for b in backends)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for name, results in all_results.items():
        by_backend = {r["backend"]: r for r in results}
        for wrt in WRTS:
            for method in METHODS:
                cells = []
                for b in backends:
                    r = by_backend.get(b)
                    run = next((x for x in (r or {}).get("runs", []) if x["wrt"] == wrt and x["method"] == method), None)
                    if run is None:
                        cells.append("-")
                    elif run["status"] != "ok":
                        cells.append(run["status"])
                    else:
                        run_step = run.get("step") or r.get("step")
                        steady = fmt_steps(run["steady"], run_step) if run["steady"] is not None else "n/r"
                        cell = f"{steady} ({fmt_steps(run['first'], run_step)})"
                        if run["B"] != PROBE[name][0] and method == "exact" and name == "mobilenet":
                            cell = f"B={run['B']}: " + cell
                        cells.append(cell)
                print(f"  {name:<10} {wrt:<7} {method:<8}" + "".join(f" {c:>22}" for c in cells))
    print("  (n/r: not repeated)")
    print()


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="mlp and cnn only, 3 repeats")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default all three)")
    parser.add_argument("--models", default=None,
                        help=f"'all' or comma-separated subset of {','.join(MODELS)} "
                             f"(default all; --quick: {','.join(QUICK_MODELS)})")
    parser.add_argument("--repeats", type=int, default=None, help="later calls per measurement (default 5; --quick 3)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="seconds one engine call may take, and the budget of its later calls (default 600)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per child, all included (default 8 * --max-seconds + 600)")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child: wrt:method,...
    opts = parser.parse_args()
    if opts.repeats is None:
        opts.repeats = 3 if opts.quick else 5
    if opts.timeout is None:
        opts.timeout = 8 * opts.max_seconds + 600

    if opts.child:
        child(opts)
        return

    from _machine import loadavg, machine_info

    backends = [b.strip() for b in opts.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; expected a subset of {','.join(BACKENDS)}")
    models = opts.models or ("all" if not opts.quick else ",".join(QUICK_MODELS))
    models = list(MODELS) if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; expected 'all' or a subset of {','.join(MODELS)}")

    start = time.perf_counter()
    print("backends.py: neuron_sensitivity per Keras backend, in training steps of that backend")
    for line in machine_info():
        print("  " + line)
    print(f"  JAX {version('jax')} (jaxlib {version('jaxlib')}); PyTorch {version('torch')}")
    print(
        f"  mode: {'quick' if opts.quick else 'full'}; backends {','.join(backends)}; models {','.join(models)}; "
        f"{opts.repeats} later calls per measurement; --max-seconds {opts.max_seconds:.0f} per engine call; "
        "one fresh subprocess per backend and model (TF_CPP_MIN_LOG_LEVEL=3, no XLA_FLAGS)"
    )
    print(
        "Units: first = the first neuron_sensitivity call on the model (tracing / compilation included; the engine "
        "was warmed up on a throwaway model); steady = median of the later calls ('calls' of them); (steps) = time / "
        "one training step of the same model on the same backend in the same process (model.train_on_batch, batch "
        f"32, Adam, sparse categorical cross-entropy, random data and labels; median after a warm-up). estimate: "
        f"num_probes={NUM_PROBES}, seed={SEED}; reduction='mean'; default layers; float32."
    )
    print(flush=True)

    all_results = {}
    for name in models:
        results = []
        for backend in backends:
            print(f"{name} on {backend} ...", file=sys.stderr, flush=True)
            r = run_backend(backend, name, opts)
            print(f"{name} on {backend}: {r['status']} in {r['wall']:.0f} s", file=sys.stderr, flush=True)
            results.append(r)
        all_results[name] = results
        print_model(name, results, opts)
    print_summary(all_results, backends)
    seen = {}
    for name, results in all_results.items():
        for r in results:
            seen.setdefault(r.get("package", "unknown"), []).append(f"{name}/{r['backend']}")
    if len(seen) > 1:
        print("WARNING: the package changed during the run; the children imported:")
        for package, where in seen.items():
            print(f"  {package}: {', '.join(where)}")
    else:
        print(f"Package imported by every child: {next(iter(seen))}")
    print(f"Total wall time: {time.perf_counter() - start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
