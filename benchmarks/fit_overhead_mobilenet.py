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
   of batch 32), EXTRAPOLATED from shorter epochs (--steps, default 150):
   the training time per step without and with the callback (a clock
   callback placed first times each epoch up to, not including, the other
   callbacks' on_epoch_end; later epochs only, the first traces the train
   step), and the callback's own on_epoch_end time per logged epoch, first
   epoch (which traces the estimator) apart. The overhead of a 1,563-step
   epoch is

       (callback time per epoch + 1,563 x (step with - step without))
       / (1,563 x step without)

   reported for a later epoch (tracing amortized away) and for the first
   epoch (tracing included). Target: at most 10 %.

The two configurations (no callback; the callback) run interleaved from the
same seeds, --repeats times each, after a throwaway warm-up fit; the final
weights of each pair are compared (they must be bit-identical).

    .venv/bin/python benchmarks/fit_overhead_mobilenet.py            # about 12 min on 2 loaded cores
    .venv/bin/python benchmarks/fit_overhead_mobilenet.py --quick    # 60 steps per epoch, 1 repeat
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 150; --quick 60)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (60 if args.quick else 150)
    repeats = args.repeats or (1 if args.quick else 3)

    v = importlib.metadata.version
    print("fit_overhead_mobilenet.py: NeuronSensitivityCallback (defaults) on MobileNetV2 in model.fit")
    print(f"  CPU: {cpu_model()}; {os.cpu_count()} cores; load average at start: {loadavg()}")
    print(f"  TensorFlow {v('tensorflow')}; Keras {v('keras')}; keras-neuron-sensitivity {v('keras-neuron-sensitivity')}")
    print(
        f"  task: MobileNetV2 alpha=0.35 32x32x3, 10 classes, Adam, batch 32, uniform random images and labels, "
        f"{steps} steps/epoch, {EPOCHS} epochs; callback: NeuronSensitivityCallback(x[:{PROBE}], log_dir=...) "
        f"at its defaults; {repeats} interleaved repeat(s)"
    )
    print(flush=True)

    x, y = data(steps)
    total_start = time.perf_counter()
    log_root = tempfile.mkdtemp(prefix="kns_fit_mobilenet_")
    results = {"none": [], "callback": []}
    try:
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        make_model().fit(x[:320], y[:320], batch_size=32, epochs=1, verbose=0)
        print(f"warm-up (a 10-step fit of a throwaway model): {time.perf_counter() - start:.1f} s", flush=True)
        for rep in range(repeats):
            for config in ("none", "callback"):
                r = run(config, x, y, log_root)
                results[config].append(r)
                extra = (
                    f"; callback on_epoch_end {', '.join(f'{t:.1f}' for t in r['callback_times'])} s"
                    if r["callback_times"] else ""
                )
                print(f"  repeat {rep + 1}: {config:<9} fit {r['time']:.1f} s{extra}", flush=True)
                if not (config == "callback" and rep == 0):
                    r["model"] = r["callback"] = None  # the first callback run is the one checked

        print()
        print("1. Logged run (repeat 1), read back with load_sensitivity:")
        first = results["callback"][0]
        ok, lines = check_logs(first, x)
        for line in lines:
            print(line)
        same = [
            all(np.array_equal(a, b) for a, b in zip(r0["weights"], r1["weights"]))
            for r0, r1 in zip(results["none"], results["callback"])
        ]
        print(f"  final weights with the callback == without: {'bit-identical' if all(same) else 'DIFFERENT'} "
              f"({sum(same)}/{len(same)} pairs)")
        cb = first["callback"]
        print(
            "  methods auto picked: "
            + ", ".join(f"{w}: {cb.sensitivities[0][w].method} ({cb.sensitivities[0][w].num_probes} probes)"
                        for w in ("weights", "inputs"))
        )
    finally:
        shutil.rmtree(log_root, ignore_errors=True)

    # 2. Overhead.
    def later_per_step(config):
        return statistics.median(t / steps for r in results[config] for t in r["epochs"][1:])

    step_none = later_per_step("none")
    step_cb = later_per_step("callback")
    firsts = [r["callback_times"][0] for r in results["callback"]]
    later = [t for r in results["callback"] for t in r["callback_times"][1:]]
    writes = [t for r in results["callback"] for t in (r["write_times"] or [])[1:]]
    cb_first, cb_later = statistics.median(firsts), statistics.median(later)
    epoch = CIFAR_STEPS * step_none
    per_step_extra = CIFAR_STEPS * (step_cb - step_none)
    steady = 100 * (cb_later + per_step_extra) / epoch
    with_tracing = 100 * (cb_first + per_step_extra) / epoch
    amortized = 100 * ((cb_first + (EPOCHS - 1) * cb_later) / EPOCHS + per_step_extra) / epoch
    print()
    print(f"2. Overhead on a CIFAR-sized epoch ({CIFAR_STEPS:,} steps of batch 32), EXTRAPOLATED from "
          f"{steps}-step epochs:")
    print(
        f"  training time per step (epochs 2-{EPOCHS}, epoch begin -> end before the callbacks' on_epoch_end; "
        f"median): without the callback {1e3 * step_none:.1f} ms, with it {1e3 * step_cb:.1f} ms "
        f"({100 * (step_cb - step_none) / step_none:+.1f} %, noise or the callback's batch hook)"
    )
    print(
        f"  callback on_epoch_end: first epoch (traces the estimator, both wrt) {cb_first:.1f} s "
        f"({cb_first / step_none:,.0f} steps; runs: {', '.join(f'{t:.1f}' for t in firsts)} s); later epochs "
        f"median {cb_later:.1f} s ({cb_later / step_none:,.0f} steps; {len(later)} epochs: "
        f"{', '.join(f'{t:.1f}' for t in later)} s)"
        + (f", of which TensorBoard writing {statistics.median(writes):.2f} s" if writes else "")
    )
    print(f"  a {CIFAR_STEPS:,}-step epoch without the callback: ~{epoch:.0f} s (extrapolated)")
    print(f"  added per epoch, later epochs (tracing amortized away): {steady:.1f} % "
          f"-> {'MET' if steady <= TARGET else 'NOT MET'} (target <= {TARGET:.0f} %)")
    print(f"  added on the first epoch (tracing included): {with_tracing:.1f} % "
          f"-> {'MET' if with_tracing <= TARGET else 'NOT MET'}")
    print(f"  averaged over a {EPOCHS}-epoch run (tracing amortized over {EPOCHS} epochs): {amortized:.1f} %")
    print(f"  logs check (1.): {'PASS' if ok else 'FAIL'}")
    print(f"\nTotal wall time: {time.perf_counter() - total_start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
