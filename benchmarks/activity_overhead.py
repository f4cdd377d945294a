"""What logging neuron health adds to the callback's cost.

The issue's target: the callback's cost with activity logging
(`activity=True`, the default) is at most 1.05x its cost without
(`activity=False`), on the digits MLP and on MobileNetV2.

The callback's cost is the time of its `on_epoch_end` with
`asynchronous=False`: everything it does for a logged epoch (the
sensitivities, the activity forward, the TensorBoard write), in the main
thread, where a clock sees it all. The machine is shared, and one epoch's
callback time moves by a factor of two with the load of other processes; so
the two callbacks are measured side by side, paired: one model per task,
and each fit carries both, one with and one without activity (each its own
log directory), which log the same epoch one after the other, the order
swapped at every repeat (`--repeats` fits of `--epochs` epochs, after a
warm-up fit that traces everything; the first epoch of each fit is left
out). Reported: the ratio of the medians over all those epochs, the median
of the per-epoch ratios, and the median time of the write alone.

- digits: sklearn's load_digits (1,797 x 64, /16), MLP 64-128-64-10 (relu,
  softmax), Adam, batch 32, probe of 128, both wrt, method="auto" (as
  `fit_overhead.py`);
- mobilenet: keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32,
  3), weights=None, classes=10), Adam, batch 32, uniform random images,
  probe of 32, both wrt, method="auto" (as `fit_overhead_mobilenet.py`),
  `--steps` training steps per epoch (the callback's cost does not depend
  on them).

    .venv/bin/python benchmarks/activity_overhead.py                 # both, about 6 min
    .venv/bin/python benchmarks/activity_overhead.py --task digits --repeats 9
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _machine import cpu_model, loadavg  # noqa: E402
from fit_overhead import Timed  # noqa: E402
from fit_overhead import data as digits_data  # noqa: E402
from fit_overhead import make_model as digits_model  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

TARGET = 1.05
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "activity_overhead.json")


def mobilenet_model():
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    return model


def mobilenet_data(steps):
    rng = np.random.RandomState(0)
    x = rng.uniform(0.0, 1.0, (32 * steps, 32, 32, 3)).astype("float32")
    return x, rng.randint(0, 10, 32 * steps).astype("int32")


TASKS = {
    "digits": {"model": digits_model, "probe": 128},
    "mobilenet": {"model": mobilenet_model, "probe": 32},
}


def fit(model, x, y, probe, order, epochs, log_root):
    """One fit with a callback per `activity` value of `order`, in that order;
    `{activity: (on_epoch_end times, write times)}` and the methods used."""
    callbacks, timers = [], {}
    for activity in order:
        callback = NeuronSensitivityCallback(
            x[:probe], log_dir=tempfile.mkdtemp(dir=log_root), asynchronous=False,
            activity=activity, seed=0, on_error="raise",
        )
        timers[activity] = Timed(callback)
        callbacks.append(callback)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    methods = {w: s.method for w, s in callbacks[0].sensitivities[0].items()}
    return {a: (t.times[1:], t.write_times[1:]) for a, t in timers.items()}, methods


def measure(task, args, log_root):
    settings = TASKS[task]
    x, y = digits_data() if task == "digits" else mobilenet_data(args.steps)
    keras.utils.set_random_seed(0)
    model = settings["model"]()
    start = time.perf_counter()
    fit(model, x, y, settings["probe"], (True, False), 2, log_root)  # warm-up: traces both
    print(f"{task}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    times = {True: [], False: []}
    writes = {True: [], False: []}
    for repeat in range(args.repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        timed, methods = fit(model, x, y, settings["probe"], order, args.epochs, log_root)
        for activity, (t, w) in timed.items():
            times[activity] += t
            writes[activity] += w
        print(f"  repeat {repeat + 1}: on_epoch_end with / without activity: "
              + ", ".join(f"{1e3 * a:.1f}/{1e3 * b:.1f}" for a, b in zip(timed[True][0], timed[False][0]))
              + " ms", flush=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    paired = statistics.median(a / b for a, b in zip(times[True], times[False]))
    result = {
        "task": task,
        "methods": methods,
        "epochs_timed": len(times[True]),
        "with_activity_ms": 1e3 * on,
        "without_activity_ms": 1e3 * off,
        "ratio": on / off,
        "median_paired_ratio": paired,
        "write_with_activity_ms": 1e3 * statistics.median(writes[True]),
        "write_without_activity_ms": 1e3 * statistics.median(writes[False]),
    }
    print(
        f"{task}: callback per logged epoch, median of {len(times[True])}: "
        f"{1e3 * on:.1f} ms with activity, {1e3 * off:.1f} ms without: {on / off:.3f}x "
        f"(per-epoch ratios: median {paired:.3f}x; target <= {TARGET}x); the write alone "
        f"{result['write_with_activity_ms']:.1f} ms vs {result['write_without_activity_ms']:.1f} ms; "
        f"methods {methods}",
        flush=True,
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "both"], default="both")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="MobileNetV2 training steps per epoch")
    parser.add_argument("--save", action="store_true", help=f"store the results in {RESULTS}")
    args = parser.parse_args()
    v = importlib.metadata.version
    machine = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "load_at_start": loadavg(),
        "tensorflow": v("tensorflow"), "keras": v("keras"),
    }
    print(f"activity_overhead.py: {machine}", flush=True)
    log_root = tempfile.mkdtemp(prefix="kns_activity_overhead_")
    try:
        tasks = list(TASKS) if args.task == "both" else [args.task]
        results = [measure(task, args, log_root) for task in tasks]
    finally:
        shutil.rmtree(log_root, ignore_errors=True)
    machine["load_at_end"] = loadavg()
    print()
    print(f"{'task':<10} {'with activity':>14} {'without':>10} {'ratio':>7} {'paired':>7}  target <= {TARGET}x")
    for r in results:
        print(f"{r['task']:<10} {r['with_activity_ms']:>11.1f} ms {r['without_activity_ms']:>7.1f} ms "
              f"{r['ratio']:>6.3f}x {r['median_paired_ratio']:>6.3f}x  "
              f"{'met' if r['ratio'] <= TARGET else 'NOT met'}")
    if args.save:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
