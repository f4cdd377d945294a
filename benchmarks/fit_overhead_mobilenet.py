"""NeuronSensitivityCallback at its defaults on MobileNetV2: it logs everything, at what cost.

Issue 10's Done-when, on keras.applications.MobileNetV2(alpha=0.35,
input_shape=(32, 32, 3), weights=None, classes=10), Adam, batch 32, uniform
random images in [0, 1) with random labels (no data set can be downloaded):

1. A 3-epoch `fit` with `NeuronSensitivityCallback(x[:32], log_dir=...)` at
   its defaults (both wrt, every epoch, method="auto") finishes, and the run
   read back with `load_sensitivity` holds every default layer for both wrt
   at each epoch, each a vector of the layer's width equal to what the
   callback kept in `callback.sensitivities`.
2. What the callback adds to a CIFAR-sized epoch (50,000 images, 1,563 steps
   of batch 32), EXTRAPOLATED from shorter epochs (--steps, default 150).
   In one process, on one model, 1-epoch fits alternate --pairs times
   without and with one NeuronSensitivityCallback (defaults; it logs at each
   of its fits' epoch), so that load from other processes shifts both alike:
   the training time per step (a clock callback placed first times each
   epoch up to, not including, the other callbacks' on_epoch_end) without
   and with the callback attached (median of the paired differences), and
   the callback's own on_epoch_end time per logged epoch, its first (which
   traces the estimator) apart. The overhead of a 1,563-step epoch is

       (callback time per epoch + 1,563 x (step with - step without))
       / (1,563 x step without)

   reported for a later epoch (tracing amortized away), for the first epoch
   (tracing included), and by the callback's own time alone. Target: at most
   10 %.

Part 1 also fits the same 3 epochs without the callback from the same seeds
and compares the final weights (they must be bit-identical). A throwaway
warm-up fit comes first.

    .venv/bin/python benchmarks/fit_overhead_mobilenet.py            # about 10 min on 2 loaded cores
    .venv/bin/python benchmarks/fit_overhead_mobilenet.py --quick    # 60 steps per epoch, 2 pairs
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

from _machine import cpu_model, loadavg  # noqa: E402
from fit_overhead import EpochClock, Timed  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity  # noqa: E402
from keras_neuron_sensitivity import _computation  # noqa: E402

CIFAR_STEPS = 1563  # 50,000 images, batch 32
EPOCHS = 3
PROBE = 32
TARGET = 10.0  # % of a CIFAR-sized epoch


def make_model():
    model = keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10
    )
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    return model


def data(steps):
    rng = np.random.RandomState(0)
    x = rng.uniform(0.0, 1.0, (32 * steps, 32, 32, 3)).astype("float32")
    y = rng.randint(0, 10, 32 * steps).astype("int32")
    return x, y


def run(config, x, y, log_root):
    """One 3-epoch fit from seed 0; the callback's own times when present."""
    keras.utils.set_random_seed(0)
    model = make_model()
    clock = EpochClock()
    callbacks, timer, callback, log_dir = [clock], None, None, None
    if config == "callback":
        log_dir = tempfile.mkdtemp(dir=log_root)
        callback = NeuronSensitivityCallback(x[:PROBE], log_dir=log_dir)
        timer = Timed(callback)
        callbacks.append(callback)
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    return {
        "time": time.perf_counter() - start,
        "epochs": clock.durations,
        "callback_times": timer.times if timer else None,
        "write_times": timer.write_times if timer else None,
        "weights": model.get_weights(),
        "model": model,
        "callback": callback,
        "log_dir": log_dir,
    }


def check_logs(result, x):
    """Every default layer, both wrt, every epoch, read back: lines of findings."""
    model, callback, log_dir = result["model"], result["callback"], result["log_dir"]
    problem = _computation.prepare(model, x[:PROBE], wrt=("weights", "inputs"), layers=None)
    keys = list(problem.keys)
    run = load_sensitivity(log_dir)
    lines, ok = [], True
    for wrt in ("weights", "inputs"):
        logged = run.get(wrt, {})
        missing = [k for k in keys if k not in logged]
        extra = [k for k in logged if k not in keys]
        bad_steps = [k for k in keys if k in logged and sorted(logged[k]) != list(range(EPOCHS))]
        mismatched = [
            k for k in keys if k in logged and not bad_steps
            for step in range(EPOCHS)
            if not np.array_equal(
                np.asarray(logged[k][step], np.float32),
                np.asarray(callback.sensitivities[step][wrt][k], np.float32),
            )
        ]
        methods = sorted({callback.sensitivities[s][wrt].method for s in callback.sensitivities})
        neurons = sum(len(logged[k][0]) for k in keys if k in logged and 0 in logged[k])
        good = not (missing or extra or bad_steps or mismatched)
        ok &= good
        lines.append(
            f"  {'OK  ' if good else 'FAIL'} wrt={wrt}: {len(keys) - len(missing)}/{len(keys)} default layers "
            f"logged at steps {sorted({s for k in logged for s in logged[k]})}, {neurons:,} neurons per step; "
            f"method {', '.join(methods)}"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; not default {extra[:5]}" if extra else "")
            + (f"; wrong steps on {bad_steps[:5]}" if bad_steps else "")
            + (f"; read back != callback.sensitivities on {sorted(set(mismatched))[:5]}" if mismatched else "")
        )
    return ok, lines


def paired(x, y, steps, pairs, log_root):
    """Alternated 1-epoch fits of one model without and with one callback."""
    keras.utils.set_random_seed(0)
    model = make_model()
    model.fit(x[:320], y[:320], batch_size=32, epochs=1, verbose=0)  # traces the train step
    callback = NeuronSensitivityCallback(x[:PROBE], log_dir=tempfile.mkdtemp(dir=log_root))
    timer = Timed(callback)
    without, with_callback = [], []
    for i in range(pairs):
        for config in ("none", "callback"):
            clock = EpochClock()
            callbacks = [clock] + ([callback] if config == "callback" else [])
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
            (without if config == "none" else with_callback).append(clock.durations[0] / steps)
        print(
            f"  pair {i + 1}: per step without {1e3 * without[-1]:.1f} ms, with {1e3 * with_callback[-1]:.1f} ms; "
            f"callback on_epoch_end {timer.times[-1]:.1f} s",
            flush=True,
        )
    return without, with_callback, timer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 150; --quick 60)")
    parser.add_argument("--pairs", type=int, default=None, help="alternated fit pairs in part 2 (default 4; --quick 2)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (60 if args.quick else 150)
    pairs = args.pairs or (2 if args.quick else 4)

    v = importlib.metadata.version
    print("fit_overhead_mobilenet.py: NeuronSensitivityCallback (defaults) on MobileNetV2 in model.fit")
    print(f"  CPU: {cpu_model()}; {os.cpu_count()} cores; load average at start: {loadavg()}")
    print(f"  TensorFlow {v('tensorflow')}; Keras {v('keras')}; keras-neuron-sensitivity {v('keras-neuron-sensitivity')}")
    print(
        f"  task: MobileNetV2 alpha=0.35 32x32x3, 10 classes, Adam, batch 32, uniform random images and labels, "
        f"{steps} steps/epoch; callback: NeuronSensitivityCallback(x[:{PROBE}], log_dir=...) at its defaults"
    )
    print(flush=True)

    x, y = data(steps)
    total_start = time.perf_counter()
    log_root = tempfile.mkdtemp(prefix="kns_fit_mobilenet_")
    try:
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        make_model().fit(x[:320], y[:320], batch_size=32, epochs=1, verbose=0)
        print(f"warm-up (a 10-step fit of a throwaway model): {time.perf_counter() - start:.1f} s", flush=True)

        print(f"1. {EPOCHS}-epoch fits from seed 0, without and with the callback:")
        results = {}
        for config in ("none", "callback"):
            r = run(config, x, y, log_root)
            results[config] = r
            extra = (
                f"; callback on_epoch_end {', '.join(f'{t:.1f}' for t in r['callback_times'])} s"
                if r["callback_times"] else ""
            )
            print(f"  {config:<9} fit {r['time']:.1f} s{extra}", flush=True)
        ok, lines = check_logs(results["callback"], x)
        print("  the callback's run, read back with load_sensitivity:")
        for line in lines:
            print("  " + line)
        same = all(np.array_equal(a, b) for a, b in zip(results["none"]["weights"], results["callback"]["weights"]))
        print(f"  final weights with the callback == without: {'bit-identical' if same else 'DIFFERENT'}")
        cb = results["callback"]["callback"]
        print(
            "  methods auto picked: "
            + ", ".join(f"{w}: {cb.sensitivities[0][w].method} ({cb.sensitivities[0][w].num_probes} probes)"
                        for w in ("weights", "inputs"))
        )
        fit_first = results["callback"]["callback_times"][0]
        fit_later = results["callback"]["callback_times"][1:]
        del results

        print()
        print(f"2. Alternated 1-epoch fits of one model ({steps} steps), without and with one callback:")
        without, with_callback, timer = paired(x, y, steps, pairs, log_root)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    step_none = statistics.median(without)
    extra_step = statistics.median(b - a for a, b in zip(without, with_callback))
    cb_first = timer.times[0]
    later = timer.times[1:] + fit_later
    cb_later = statistics.median(later)
    writes = timer.write_times[1:]
    epoch = CIFAR_STEPS * step_none
    per_step_extra = CIFAR_STEPS * extra_step
    steady = 100 * (cb_later + per_step_extra) / epoch
    with_tracing = 100 * (cb_first + per_step_extra) / epoch
    own_steady = 100 * cb_later / epoch
    own_first = 100 * cb_first / epoch
    amortized = 100 * ((cb_first + (EPOCHS - 1) * cb_later) / EPOCHS + per_step_extra) / epoch
    print()
    print(f"Overhead on a CIFAR-sized epoch ({CIFAR_STEPS:,} steps of batch 32), EXTRAPOLATED from "
          f"{steps}-step epochs:")
    print(
        f"  training time per step (part 2, median of {pairs}): without the callback {1e3 * step_none:.1f} ms; "
        f"with it attached, median paired difference {1e3 * extra_step:+.1f} ms "
        f"({100 * extra_step / step_none:+.1f} %; pairs: "
        f"{', '.join(f'{1e3 * (b - a):+.1f}' for a, b in zip(without, with_callback))} ms)"
    )
    print(
        f"  callback on_epoch_end: first logged epoch (traces the estimator, both wrt) {cb_first:.1f} s "
        f"({cb_first / step_none:,.0f} steps; part 1's first: {fit_first:.1f} s); later epochs median "
        f"{cb_later:.1f} s ({cb_later / step_none:,.0f} steps; {len(later)} epochs of parts 1 and 2: "
        f"{', '.join(f'{t:.1f}' for t in later)} s)"
        + (f", of which TensorBoard writing {statistics.median(writes):.2f} s" if writes else "")
    )
    print(f"  a {CIFAR_STEPS:,}-step epoch without the callback: ~{epoch:.0f} s (extrapolated)")
    verdict = lambda p: "MET" if p <= TARGET else "NOT MET"  # noqa: E731
    print(f"  added to a later epoch (tracing amortized away): {steady:.1f} % -> {verdict(steady)} "
          f"(target <= {TARGET:.0f} %); by the callback's own time alone: {own_steady:.1f} % -> {verdict(own_steady)}")
    print(f"  added to the first epoch (tracing included): {with_tracing:.1f} % -> {verdict(with_tracing)}; "
          f"by the callback's own time alone: {own_first:.1f} % -> {verdict(own_first)}")
    print(f"  averaged over a {EPOCHS}-epoch run (tracing amortized over {EPOCHS} epochs): {amortized:.1f} %")
    print(f"  logs check (part 1): {'PASS' if ok else 'FAIL'}; weights bit-identical: {'PASS' if same else 'FAIL'}")
    print(f"\nTotal wall time: {time.perf_counter() - total_start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
