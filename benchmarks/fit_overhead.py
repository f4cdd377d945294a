"""What `NeuronSensitivityCallback` adds to `model.fit`, next to Keras's TensorBoard.

Digits-sized task: sklearn's load_digits (1,797 x 64, scaled /16), MLP
64-128-64-10 (relu, softmax output), Adam, batch 32. Three configurations,
each from the same seeds, run interleaved 3 times (median reported):

  (a) no callbacks
  (b) keras.callbacks.TensorBoard(log_dir, histogram_freq=1)
  (c) NeuronSensitivityCallback(x[:128], log_dir=...)  (wrt weights and inputs, every epoch)

TF is warmed up first with a 1-epoch fit of a throwaway model (plain, then
with both callbacks), so one-time process costs (kernel setup, summary-writer
imports) are in no configuration; the per-model tracing of each configuration
is, as a user pays it. The callback's own time is measured by wrapping its
`on_epoch_end`; its first epoch (which traces the sweep) is shown apart.

    .venv/bin/python benchmarks/fit_overhead.py               # 30 epochs, ~2 min
    .venv/bin/python benchmarks/fit_overhead.py --epochs 10
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
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402

CONFIGS = ("none", "tensorboard", "sensitivity")
LABELS = {
    "none": "(a) no callbacks",
    "tensorboard": "(b) TensorBoard(histogram_freq=1)",
    "sensitivity": "(c) NeuronSensitivityCallback",
}
TARGET = 10.0  # % overhead of (c) over (a)


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


def run(config, x, y, epochs, log_root, probe_size):
    keras.utils.set_random_seed(0)
    model = make_model()
    log_dir = tempfile.mkdtemp(dir=log_root)
    clock = EpochClock()
    callbacks, timer = [clock], None
    if config == "tensorboard":
        callbacks.append(keras.callbacks.TensorBoard(log_dir, histogram_freq=1))
    elif config == "sensitivity":
        callback = NeuronSensitivityCallback(x[:probe_size], log_dir=log_dir)
        timer = Timed(callback)
        callbacks.append(callback)
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    elapsed = time.perf_counter() - start
    weights = [w.copy() for w in model.get_weights()]
    shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "time": elapsed,
        "callback_times": timer.times if timer else None,
        "write_times": timer.write_times if timer else None,
        "epoch_times": clock.durations,
        "weights": weights,
        "loss": history.history["loss"][-1],
        "jit_compile": model.jit_compile,
    }


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
        f"{args.repeats} interleaved repeats per configuration"
    )
    print(flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-size", type=int, default=128)
    args = parser.parse_args()

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
                NeuronSensitivityCallback(x[: args.probe_size], log_dir=warm_dir),
            ],
        )
        print(f"warm-up (two 1-epoch fits on throwaway models): {time.perf_counter() - start:.1f} s")

        results = {c: [] for c in CONFIGS}
        for rep in range(args.repeats):
            for config in CONFIGS:
                r = run(config, x, y, args.epochs, log_root, args.probe_size)
                results[config].append(r)
                print(f"  repeat {rep + 1}: {LABELS[config]:<36} {r['time']:7.2f} s", flush=True)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    base = statistics.median(r["time"] for r in results["none"])
    print()
    print(f"Results: model.fit, {args.epochs} epochs, median of {args.repeats} (jit_compile={results['none'][0]['jit_compile']})")
    head = (
        f"  {'configuration':<36} {'median fit':>11} {'per epoch':>10} {'overhead':>9} {'all runs':>26} "
        f"{'train 1st ep':>12} {'train later':>11}  final weights == (a)"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for config in CONFIGS:
        times = [r["time"] for r in results[config]]
        med = statistics.median(times)
        same = all(
            all(np.array_equal(w, v) for w, v in zip(r["weights"], a["weights"]))
            for r, a in zip(results[config], results["none"])
        )
        overhead = f"{100 * (med - base) / base:+.1f} %" if config != "none" else "-"
        runs = ", ".join(f"{t:.2f}" for t in times)
        first_epoch = statistics.median(r["epoch_times"][0] for r in results[config])
        later = statistics.median(t for r in results[config] for t in r["epoch_times"][1:])
        print(
            f"  {LABELS[config]:<36} {med:>9.2f} s {1e3 * med / args.epochs:>7.1f} ms {overhead:>9} {runs:>26} "
            f"{1e3 * first_epoch:>9.0f} ms {1e3 * later:>8.1f} ms  "
            + ("bit-identical" if same else "DIFFERENT")
        )
    a_same = all(
        all(np.array_equal(w, v) for w, v in zip(r["weights"], results["none"][0]["weights"]))
        for r in results["none"]
    )
    print(f"  (control: (a) repeats bit-identical to each other: {'yes' if a_same else 'NO'})")
    print(
        "  (train 1st ep / train later: epoch begin -> end as seen by a clock callback placed first, "
        "i.e. the training steps without any callback's on_epoch_end; medians)"
    )

    # The callback alone: first epoch (traces the sweep) apart from the rest.
    firsts = [r["callback_times"][0] for r in results["sensitivity"]]
    rest = [t for r in results["sensitivity"] for t in r["callback_times"][1:]]
    totals = [sum(r["callback_times"]) for r in results["sensitivity"]]
    writes_first = [r["write_times"][0] for r in results["sensitivity"] if r["write_times"]]
    writes_rest = [t for r in results["sensitivity"] for t in (r["write_times"] or [])[1:]]
    print()
    print("NeuronSensitivityCallback.on_epoch_end alone (wrt weights + inputs, 4 layers, 202 neurons, probe "
          f"{args.probe_size})")
    print(f"  first epoch (traces the sweep): median {1e3 * statistics.median(firsts):.1f} ms "
          f"(runs: {', '.join(f'{1e3 * t:.0f}' for t in firsts)} ms)")
    if writes_first:
        print(f"    of which TensorBoard writing (callback._writer.write): median {1e3 * statistics.median(writes_first):.1f} ms")
    if rest:
        print(
            f"  later epochs: median {1e3 * statistics.median(rest):.1f} ms, "
            f"p90 {1e3 * float(np.percentile(rest, 90)):.1f} ms, max {1e3 * max(rest):.1f} ms "
            f"over {len(rest)} logged epochs"
        )
        if writes_rest:
            w = statistics.median(writes_rest)
            print(
                f"    of which TensorBoard writing: median {1e3 * w:.1f} ms; "
                f"so the computation is ~{1e3 * (statistics.median(rest) - w):.1f} ms"
            )
    sens = statistics.median(r["time"] for r in results["sensitivity"])
    print(
        f"  callback total per fit: median {statistics.median(totals):.2f} s "
        f"= {100 * statistics.median(totals) / base:.1f} % of (a)'s fit time; "
        f"fit-time difference (c) - (a): {sens - base:+.2f} s"
    )
    outside = statistics.median(r["time"] - sum(r["callback_times"]) for r in results["sensitivity"])
    print(
        f"  (c)'s fit time minus its on_epoch_end time: median {outside:.2f} s vs (a) {base:.2f} s "
        f"({100 * (outside - base) / base:+.1f} %: cost outside on_epoch_end, or noise)"
    )
    if rest:
        steady = statistics.median(rest) * (args.epochs - 1)
        print(
            f"  without the one-time tracing: ~{100 * steady / base:.1f} % of (a) "
            f"(later-epoch median x {args.epochs - 1} epochs)"
        )
    overhead = 100 * (sens - base) / base
    tb = 100 * (statistics.median(r["time"] for r in results["tensorboard"]) - base) / base
    print()
    own = 100 * statistics.median(totals) / base
    print(
        f"Target: callback overhead <= {TARGET:.0f} % of fit time -> measured {overhead:+.1f} % "
        f"(median fit times): {'MET' if overhead <= TARGET else 'NOT MET'}; "
        f"by the callback's own on_epoch_end time: {own:.1f} %: {'MET' if own <= TARGET else 'NOT MET'}"
    )
    print(
        f"  (TensorBoard(histogram_freq=1): {tb:+.1f} %. Fit-time differences between runs move by "
        f"several % with other load on the machine; the callback's own time is much less sensitive to it.)"
    )
    print(f"Total wall time: {time.perf_counter() - total_start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
