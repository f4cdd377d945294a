"""neuron_sensitivity on each Keras backend, in training steps of that backend (issue 20 item 3).

One child process per backend and model (`benchmarks.models`): the digits
MLP, the 784 MLP, the README's CNN and MobileNetV2 (alpha 0.35, 32x32).
Exact on a probe of 4 (issue 20 item 3's setting), to weights and to
inputs, default layers, reduction "mean"; the full run adds the estimator
(32 probes, seed 0) on a probe of 32.

  first   the first call on the model: tracing or compilation included (the
          engine is warmed up on a throwaway model first, so imports and
          the backend's one-time set-up are in no row)
  steady  the median of `--repeats` later calls
  steps   each divided by one training step of the same model in the same
          process (`train_on_batch`, batch 32, Adam, random data; median of
          30 before and 30 after the engine's calls, pooled)

Targets (issue 20 item 3), steady exact steps against TensorFlow's:
MobileNetV2 at most 2x on JAX and 3x on PyTorch; the CNN and the digits
MLP at most 1.5x on JAX.

Quick: the digits MLP and the CNN, exact only, 3 repeats. Full: all four
models, both methods, 5 repeats.
"""

import math
import statistics
import time
import traceback

from benchmarks import _harness

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("digits_mlp", "readme_cnn", "mlp784", "mobilenet_v2")
QUICK_MODELS = ("digits_mlp", "readme_cnn")
LABELS = {
    "digits_mlp": "digits MLP 64-128-64-10",
    "readme_cnn": "README's CNN",
    "mlp784": "MLP 784-512-256-128-10",
    "mobilenet_v2": "MobileNetV2 (alpha 0.35, 32x32)",
}
PROBE = {"exact": 4, "estimate": 32}
NUM_PROBES, SEED, TRAIN_BATCH = 32, 0, 32
WRTS = ("weights", "inputs")
# (model, backend) -> at most this many times TensorFlow's steps, exact.
TARGETS = {("mobilenet_v2", "jax"): 2.0, ("mobilenet_v2", "torch"): 3.0,
           ("readme_cnn", "jax"): 1.5, ("digits_mlp", "jax"): 1.5}


def arguments(parser):
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--methods", default=None, help="exact,estimate (default: quick exact, full both)")
    parser.add_argument("--repeats", type=int, default=None, help="later calls (default 5, quick 3)")


def cases(args):
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
    methods = args.methods.split(",") if args.methods else (["exact"] if args.quick else ["exact", "estimate"])
    repeats = args.repeats or (3 if args.quick else 5)
    return [{"backend": b, "model": m, "methods": methods, "repeats": repeats}
            for m in models for b in args.backends.split(",")]


def _warm_up():
    import keras
    import numpy as np

    from keras_neuron_sensitivity import neuron_sensitivity

    keras.utils.set_random_seed(123)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2)])
    x = np.random.RandomState(0).uniform(size=(4, 8)).astype("float32")
    for wrt in WRTS:
        for method in ("exact", "estimate"):
            neuron_sensitivity(model, x, wrt=wrt, method=method, num_probes=4, seed=0)


def measure(case, emit):
    import keras
    import numpy as np

    from benchmarks import models
    from keras_neuron_sensitivity import neuron_sensitivity

    name = case["model"]
    result = {"runs": []}
    _harness.progress(f"{name}: warm-up")
    _warm_up()
    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[name]
    model = build()
    result["params"] = int(sum(math.prod(v.shape) for v in model.trainable_weights))
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    rng = np.random.RandomState(7)
    x = models.probe(name, PROBE["estimate"])
    train_x = rng.uniform(0.0, 1.0, (TRAIN_BATCH, *x.shape[1:])).astype("float32")
    train_y = rng.randint(0, int(model.outputs[0].shape[-1]), TRAIN_BATCH).astype("int32")
    _harness.progress(f"{name}: training step")
    result["step_before"] = _harness.training_step(model, train_x, train_y)
    result["step"] = result["step_before"]
    emit(result)
    # The estimator first: exact is the slow one where a run could time out.
    plan = [(w, m) for m in ("estimate", "exact") if m in case["methods"] for w in WRTS]
    for wrt, method in plan:
        run = {"wrt": wrt, "method": method, "probe": PROBE[method], "status": "running"}
        result["runs"].append(run)
        emit(result)
        _harness.progress(f"{name}: {wrt} {method}")

        def call(wrt=wrt, method=method):
            s = neuron_sensitivity(model, x[: PROBE[method]], wrt=wrt, method=method,
                                   num_probes=NUM_PROBES, seed=SEED, reduction="mean")
            if s.method != method:
                raise RuntimeError(f"asked for {method!r}, got {s.method!r}")

        try:
            start = time.perf_counter()
            call()
            run["first"] = time.perf_counter() - start
            run["steady"] = _harness.median_seconds(call, case["repeats"])
            run["status"] = "ok"
        except Exception:  # noqa: BLE001 - reported in its row
            run["status"] = "error"
            run["error"] = traceback.format_exc()[-600:]
        emit(result)
    _harness.progress(f"{name}: training step again")
    result["step_after"] = _harness.training_step(model, train_x, train_y)
    result["step"] = statistics.median([result["step_before"], result["step_after"]])
    return result


def _runs(record):
    """`{(model, backend, wrt, method): (run, step)}` of a stored result."""
    out = {}
    for entry in record["cases"]:
        result = entry["result"] or {}
        for run in result.get("runs", []):
            if entry["status"] != "ok" and run["status"] == "running":
                run = {**run, "status": entry["status"]}
            out[entry["case"]["model"], entry["case"]["backend"], run["wrt"], run["method"]] = (
                run, result.get("step"))
    return out


def _cell(item):
    if item is None:
        return "-"
    run, step = item
    if run["status"] != "ok":
        return run["status"]
    return f"{_harness.steps(run['steady'], step)} ({_harness.steps(run['first'], step)})"


def table(record):
    runs = _runs(record)
    backends = [b for b in BACKENDS if any(k[1] == b for k in runs)]
    models = [m for m in MODELS if any(k[0] == m for k in runs)]
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    lines = ["| model | wrt | method | " + " | ".join(names[b] for b in backends)
             + " | against TensorFlow, exact (target) |",
             "|---|---|---|" + "---|" * len(backends) + "---|"]
    for model in models:
        first = True
        for method in ("exact", "estimate"):
            for wrt in WRTS:
                if not any((model, b, wrt, method) in runs for b in backends):
                    continue
                cells = [_cell(runs.get((model, b, wrt, method))) for b in backends]
                against = []
                tf = runs.get((model, "tensorflow", wrt, method))
                for b in backends[1:] if method == "exact" else []:
                    other = runs.get((model, b, wrt, method))
                    if tf is None or other is None or "ok" != tf[0]["status"] or other[0]["status"] != "ok":
                        continue
                    ratio = (other[0]["steady"] / other[1]) / (tf[0]["steady"] / tf[1])
                    target = TARGETS.get((model, b))
                    verdict = "" if target is None else (
                        f" (≤ {target:g}x: {'met' if ratio <= target else 'missed'})")
                    against.append(f"{names[b]} {ratio:.2f}x{verdict}")
                label = f"{LABELS[model]}" if first else ""
                first = False
                lines.append(f"| {label} | {wrt} | {method}, B={PROBE[method]} | " + " | ".join(cells)
                             + f" | {'; '.join(against)} |")
    steps = []
    for entry in record["cases"]:
        r = entry["result"] or {}
        if r.get("step"):
            steps.append(f"{LABELS[entry['case']['model']]} on {names[entry['case']['backend']]} "
                         f"{r['step'] * 1e3:.1f} ms")
    lines += ["", "Steady calls in training steps of the same backend (first call, tracing included, in "
              "brackets). One training step (batch 32): " + "; ".join(steps) + "."]
    return "\n".join(lines)
