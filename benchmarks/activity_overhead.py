"""What logging neuron health adds to the callback's cost.

The issue's target: the callback's cost with activity logging
(`activity=True`, the default) is at most 1.05x its cost without
(`activity=False`), on the digits MLP and on MobileNetV2.

The callback's cost is the time of its `on_epoch_end` with
`asynchronous=False`: everything it does for a logged epoch (the copy of
the weights, the sensitivities, the activity forward, the TensorBoard
write), in the main thread, where a clock sees it all. One model per task;
fits of `--epochs` epochs alternate between a callback with and one without
activity, `--repeats` times each, after a warm-up fit of each (which traces
everything; both share the model's traced functions after that). The first
epoch of every fit is left out (it waits for the copy's warm-up). Reported:
the medians over the remaining epochs and their ratio, and the median time
of the write alone.

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


def fit(model, x, y, probe, activity, epochs, log_root):
    """One fit with the callback; its `on_epoch_end` and write times."""
    log_dir = tempfile.mkdtemp(dir=log_root)
    callback = NeuronSensitivityCallback(
        x[:probe], log_dir=log_dir, asynchronous=False, activity=activity, seed=0, on_error="raise"
    )
    timer = Timed(callback)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[callback])
    shutil.rmtree(log_dir, ignore_errors=True)
    methods = {w: s.method for w, s in callback.sensitivities[0].items()}
    return timer.times[1:], timer.write_times[1:], methods


def measure(task, args, log_root):
    settings = TASKS[task]
    x, y = digits_data() if task == "digits" else mobilenet_data(args.steps)
    keras.utils.set_random_seed(0)
    model = settings["model"]()
    start = time.perf_counter()
    for activity in (True, False):  # warm-up: traces both
        fit(model, x, y, settings["probe"], activity, 2, log_root)
    print(f"{task}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    times = {True: [], False: []}
    writes = {True: [], False: []}
    for repeat in range(args.repeats):
        for activity in (True, False) if repeat % 2 == 0 else (False, True):
            t, w, methods = fit(model, x, y, settings["probe"], activity, args.epochs, log_root)
            times[activity] += t
            writes[activity] += w
            print(f"  repeat {repeat + 1}, activity={activity!s:<5}: on_epoch_end "
                  + ", ".join(f"{1e3 * v:.1f}" for v in t) + " ms", flush=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    result = {
        "task": task,
        "methods": methods,
        "epochs_timed": len(times[True]),
        "with_activity_ms": 1e3 * on,
        "without_activity_ms": 1e3 * off,
        "ratio": on / off,
        "write_with_activity_ms": 1e3 * statistics.median(writes[True]),
        "write_without_activity_ms": 1e3 * statistics.median(writes[False]),
    }
    print(
        f"{task}: callback per logged epoch, median of {len(times[True])}: "
        f"{1e3 * on:.1f} ms with activity, {1e3 * off:.1f} ms without: {on / off:.3f}x "
        f"(target <= {TARGET}x: {'met' if on / off <= TARGET else 'NOT met'}); the write alone "
        f"{result['write_with_activity_ms']:.1f} ms vs {result['write_without_activity_ms']:.1f} ms; "
        f"methods {methods}",
        flush=True,
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "both"], default="both")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
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
    print(f"{'task':<10} {'with activity':>14} {'without':>10} {'ratio':>7}  target <= {TARGET}x")
    for r in results:
        print(f"{r['task']:<10} {r['with_activity_ms']:>11.1f} ms {r['without_activity_ms']:>7.1f} ms "
              f"{r['ratio']:>6.3f}x  {'met' if r['ratio'] <= TARGET else 'NOT met'}")
    if args.save:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
        print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
