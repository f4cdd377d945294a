"""What `NeuronSensitivityCallback` adds to `model.fit`, next to Keras's TensorBoard.

Digits-sized task (issue 14's): sklearn's load_digits (1,797 x 64, scaled
/16), MLP 64-128-64-10 (relu, softmax output), Adam, batch 32, probe of 128,
the callback at its defaults. Four configurations, each from the same seeds,
run alternately `--repeats` times (medians reported: the machine is shared,
and single runs move by tens of %):

  (a) no callbacks
  (b) keras.callbacks.TensorBoard(log_dir, histogram_freq=1)
  (c) NeuronSensitivityCallback(x[:128], log_dir=...)  (defaults: asynchronous)
  (d) the same with asynchronous=False

TF is warmed up first with a 1-epoch fit of a throwaway model (plain, then
with the callbacks), so one-time process costs (kernel setup, summary-writer
imports) are in no configuration; the per-model tracing of each configuration
is, as a user pays it. Checked on every run: the weights after `fit` equal
(a)'s bit for bit, every epoch is readable by `load_sensitivity` right after
`fit` returns, and (c)'s logged values equal (d)'s.

    .venv/bin/python benchmarks/fit_overhead.py                       # 6 epochs, 7 repeats
    .venv/bin/python benchmarks/fit_overhead.py --epochs 30 --repeats 3
    .venv/bin/python benchmarks/fit_overhead.py --method exact
"""

import argparse
import importlib.metadata
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from _machine import cpu_model, loadavg  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity  # noqa: E402

CONFIGS = ("none", "tensorboard", "asynchronous", "synchronous")
LABELS = {
    "none": "(a) no callbacks",
    "tensorboard": "(b) TensorBoard(histogram_freq=1)",
    "asynchronous": "(c) NeuronSensitivityCallback (defaults)",
    "synchronous": "(d) ... asynchronous=False",
}
TARGET = 1.05  # fit time with the callback over fit time without


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    return x, y


def make_model():
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class Timed:
    """Wraps a callback's `on_epoch_end` with a wall-clock timer.

    Also times its TensorBoard writing when the (private) writer is where it
    is today, `callback._writer.write`; skipped silently otherwise.
    """

    def __init__(self, callback):
        self.times, self.write_times = [], []
        inner = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            start = time.perf_counter()
            inner(epoch, logs)
            self.times.append(time.perf_counter() - start)

        callback.on_epoch_end = on_epoch_end
        writer = getattr(callback, "_writer", None)
        if writer is not None and callable(getattr(writer, "write", None)):
            write = writer.write

            def timed_write(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return write(*args, **kwargs)
                finally:
                    self.write_times.append(time.perf_counter() - start)

            writer.write = timed_write


class EpochClock(keras.callbacks.Callback):
    """First in every configuration: epoch begin -> end, before the others' on_epoch_end."""

    def __init__(self):
        super().__init__()
        self.durations = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def run(config, x, y, args, log_root):
    keras.utils.set_random_seed(0)
    model = make_model()
    log_dir = tempfile.mkdtemp(dir=log_root)
    clock = EpochClock()
    callbacks, timer, callback = [clock], None, None
    if config == "tensorboard":
        callbacks.append(keras.callbacks.TensorBoard(log_dir, histogram_freq=1))
    elif config in ("asynchronous", "synchronous"):
        callback = NeuronSensitivityCallback(
            x[: args.probe_size], log_dir=log_dir, method=args.method, seed=0,
            asynchronous=config == "asynchronous",
        )
        timer = Timed(callback)
        callbacks.append(callback)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=callbacks)
    elapsed = time.perf_counter() - start
    result = {
        "time": elapsed,
        "cpu": time.process_time() - cpu_start,
        "epoch_times": clock.durations,
        "weights": [w.copy() for w in model.get_weights()],
        "loss": history.history["loss"][-1],
        "jit_compile": model.jit_compile,
    }
    if callback is not None:
        # Right after fit returns: every epoch is on disk.
        logged = load_sensitivity(log_dir)
        result["readable"] = all(
            sorted(per_step) == list(range(args.epochs))
            for per_layer in logged.values()
            for per_step in per_layer.values()
        )
        result["logged"] = logged
        result["waited"] = callback.waited
        result["callback_times"] = timer.times
        result["write_times"] = timer.write_times
        result["methods"] = {w: v.method for w, v in callback.sensitivities[0].items()}
    shutil.rmtree(log_dir, ignore_errors=True)
    return result


def header(args, x):
    cpu = cpu_model()
    v = importlib.metadata.version
    print("fit_overhead.py: cost of NeuronSensitivityCallback in model.fit")
    print(f"  CPU: {cpu}; {os.cpu_count()} cores; load average at start: {loadavg()}")
    print(
        f"  TensorFlow {v('tensorflow')}; Keras {v('keras')}; "
        f"keras-neuron-sensitivity {v('keras-neuron-sensitivity')}"
    )
    print(
        f"  task: load_digits {x.shape[0]} x {x.shape[1]} (/16), MLP 64-128-64-10, Adam, batch 32, "
        f"{-(-x.shape[0] // 32)} steps/epoch, {args.epochs} epochs, probe {args.probe_size} samples, "
        f"method={args.method!r}, {args.repeats} alternating repeats per configuration"
    )
    print(flush=True)


def same_values(a, b):
    return all(
        np.array_equal(a[w][k][s], b[w][k][s])
        for w in a for k in a[w] for s in a[w][k]
    ) and a.keys() == b.keys()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    configs = [c for c in CONFIGS if c in args.configs.split(",")]

    x, y = data()
    header(args, x)
    total_start = time.perf_counter()
    log_root = tempfile.mkdtemp(prefix="kns_fit_overhead_")
    try:
        # Warm-up: TF kernels, Keras's train step machinery, the summary
        # writers and the engine's imports; throwaway models.
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        make_model().fit(x, y, batch_size=32, epochs=1, verbose=0)
        keras.utils.set_random_seed(0)
        warm_dir = tempfile.mkdtemp(dir=log_root)
        make_model().fit(
            x, y, batch_size=32, epochs=1, verbose=0,
            callbacks=[
                keras.callbacks.TensorBoard(warm_dir, histogram_freq=1),
                NeuronSensitivityCallback(x[: args.probe_size], log_dir=warm_dir, method=args.method),
            ],
        )
        print(f"warm-up (two 1-epoch fits on throwaway models): {time.perf_counter() - start:.1f} s")

        results = {c: [] for c in configs}
        for rep in range(args.repeats):
            for config in configs:
                r = run(config, x, y, args, log_root)
                results[config].append(r)
                print(f"  repeat {rep + 1}: {LABELS[config]:<40} {r['time']:7.2f} s", flush=True)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    base = statistics.median(r["time"] for r in results["none"])
    print()
    print(f"Results: model.fit, {args.epochs} epochs, median of {args.repeats} (jit_compile={results['none'][0]['jit_compile']})")
    head = (
        f"  {'configuration':<40} {'median fit':>11} {'ratio to (a)':>12} {'all runs':>40} "
        f"{'train 1st ep':>12} {'train later':>11}  final weights == (a)"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for config in configs:
        times = [r["time"] for r in results[config]]
        med = statistics.median(times)
        same = all(
            all(np.array_equal(w, v) for w, v in zip(r["weights"], a["weights"]))
            for r, a in zip(results[config], results["none"])
        )
        runs = ", ".join(f"{t:.2f}" for t in times)
        first_epoch = statistics.median(r["epoch_times"][0] for r in results[config])
        later = statistics.median(t for r in results[config] for t in r["epoch_times"][1:])
        print(
            f"  {LABELS[config]:<40} {med:>9.2f} s {med / base:>11.3f}x {runs:>40} "
            f"{1e3 * first_epoch:>9.0f} ms {1e3 * later:>8.1f} ms  "
            + ("bit-identical" if same else "DIFFERENT")
        )
    ratios = {
        c: statistics.median(r["time"] / a["time"] for r, a in zip(results[c], results["none"]))
        for c in configs
    }
    print("  median over repeats of (run time / the (a) run of the same repeat): "
          + ", ".join(f"{LABELS[c][:3]} {ratios[c]:.3f}" for c in configs if c != "none"))
    cpu_base = statistics.median(r["cpu"] for r in results["none"])
    print("  process CPU time (all threads), median: "
          + ", ".join(
              f"{LABELS[c][:3]} {statistics.median(r['cpu'] for r in results[c]):.2f} s "
              f"({statistics.median(r['cpu'] for r in results[c]) / cpu_base:.3f}x)"
              for c in configs))
    print(
        "  (train 1st ep / train later: epoch begin -> end as seen by a clock callback placed first, "
        "i.e. the training steps without any callback's on_epoch_end; medians)"
    )

    ours = [c for c in ("asynchronous", "synchronous") if c in configs]
    for config in ours:
        rs = results[config]
        print()
        print(f"{LABELS[config]}: methods {rs[0]['methods']}")
        print(f"  every epoch readable by load_sensitivity right after fit: "
              f"{'yes' if all(r['readable'] for r in rs) else 'NO'}")
        firsts = [r["callback_times"][0] for r in rs]
        rest = [t for r in rs for t in r["callback_times"][1:]]
        waited = [r["waited"] for r in rs]
        writes = [t for r in rs for t in r["write_times"]]
        print(f"  training waited for the callback (all hooks): median {statistics.median(waited):.3f} s "
              f"per fit = {100 * statistics.median(waited) / base:.1f} % of (a)")
        print(f"  on_epoch_end: first epoch median {1e3 * statistics.median(firsts):.1f} ms, later epochs "
              f"median {1e3 * statistics.median(rest):.1f} ms" if rest else "")
        if writes:
            print(f"  writing one epoch (SensitivityWriter.write, "
                  f"{'background thread' if config == 'asynchronous' else 'in on_epoch_end'}): "
                  f"median {1e3 * statistics.median(writes):.2f} ms")
    if len(ours) == 2:
        equal = all(
            same_values(a["logged"], s["logged"])
            for a, s in zip(results["asynchronous"], results["synchronous"])
        )
        print()
        print(f"Logged values, asynchronous == synchronous (every epoch, layer, wrt, bit for bit): "
              f"{'yes' if equal else 'NO'}")
    if "asynchronous" in configs:
        ratio = statistics.median(r["time"] for r in results["asynchronous"]) / base
        print(f"Target: fit with the callback (defaults) <= {TARGET:.2f}x fit without -> {ratio:.3f}x "
              f"(medians): {'MET' if ratio <= TARGET else 'NOT MET'}")
    if "tensorboard" in configs:
        tb = statistics.median(r["time"] for r in results["tensorboard"]) / base
        print(f"  (TensorBoard(histogram_freq=1): {tb:.3f}x)")
    print(f"Total wall time: {time.perf_counter() - total_start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
