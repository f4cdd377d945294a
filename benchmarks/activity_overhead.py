"""What neuron health adds to the callback's cost, paired per epoch (issue 21: at most 1.05x).

The callback's cost is the time of its `on_epoch_end` with
`asynchronous=False`: everything it does for a logged epoch (the
sensitivities, the activity read in the same forward, the TensorBoard
write), in the main thread, where a clock sees it all. One epoch's callback
time moves by a factor of two with the load of other processes, so the two
callbacks are measured side by side: one model per task, and each `fit`
carries both, `activity=True` (the default) and `activity=False`, each with
its own log directory, logging the same epoch one after the other, the
order swapped at every repeat. Clock callbacks placed before, between and
after them time each one's `on_epoch_end` (nothing of the callback is
wrapped). `--repeats` fits of `--epochs` epochs after a warm-up fit of 2
that traces everything; each fit's first epoch is left out.

- digits: sklearn's load_digits, `models.digits_mlp`, Adam, batch 32,
  probe of 128;
- mobilenet: `models.mobilenet_v2` (alpha 0.35, 32x32), Adam, batch 32,
  uniform random images, probe of 32, `--steps` training steps per epoch
  (the callback's cost does not depend on them).

Both wrt, `method="auto"`, seed 0. Reported: the medians with and without
activity and their ratio, the median of the per-epoch ratios, and the
median time of the TensorBoard write alone (timed on the callback's private
writer, the one thing no public hook sees); every figure also in training
steps of the same model (`train_on_batch`, batch 32, median of 30 before
and 30 after, pooled), measured in the same process.

Full: 6 fits of 6 epochs (30 paired epochs per task). Quick: the same on
the digits (it takes seconds), 3 fits of 4 epochs on MobileNetV2 (9 paired
epochs, about 5 minutes on 2 loaded cores).
"""

import shutil
import statistics
import tempfile
import time

from benchmarks import _harness

TASKS = ("digits", "mobilenet")
LABELS = {"digits": "digits MLP 64-128-64-10, probe of 128",
          "mobilenet": "MobileNetV2 (alpha 0.35, 32x32), probe of 32"}
PROBE = {"digits": 128, "mobilenet": 32}
TARGET = 1.05


def arguments(parser):
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--repeats", type=int, default=None, help="fits (default 6; quick: 3 on MobileNetV2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per fit (default 6; quick: 4 on MobileNetV2)")
    parser.add_argument("--steps", type=int, default=4, help="MobileNetV2's training steps per epoch")


def cases(args):
    return [{"backend": "tensorflow", "task": task,
             "repeats": args.repeats or (3 if args.quick and task == "mobilenet" else 6),
             "epochs": args.epochs or (4 if args.quick and task == "mobilenet" else 6),
             "steps": args.steps}
            for task in args.tasks.split(",")]


def _fit(model, x, y, probe, order, epochs, log_root):
    """One fit with a callback per `activity` value of `order`, in that
    order, between clocks; `({activity: [on_epoch_end seconds]},
    {activity: [write seconds]}, methods)`, the first epoch left out."""
    from benchmarks._clocks import Clock, between, time_writes
    from keras_neuron_sensitivity import NeuronSensitivityCallback

    clocks = [Clock()]
    callbacks, writes, ours = [clocks[0]], {}, []
    for activity in order:
        callback = NeuronSensitivityCallback(
            x[:probe], log_dir=tempfile.mkdtemp(dir=log_root), asynchronous=False,
            activity=activity, seed=0, on_error="raise",
        )
        writes[activity] = time_writes(callback)
        clocks.append(Clock())
        ours.append(callback)
        callbacks += [callback, clocks[-1]]
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    times = {a: between(clocks[i], clocks[i + 1])[1:] for i, a in enumerate(order)}
    methods = {w: s.method for w, s in ours[0].sensitivities[0].items()}
    return times, {a: w[1:] for a, w in writes.items()}, methods


def measure(case, emit):
    import keras
    import numpy as np

    from benchmarks import models

    task = case["task"]
    keras.utils.set_random_seed(0)
    if task == "digits":
        x, y = models.digits()
        model = models.digits_mlp()
    else:
        rng = np.random.RandomState(0)
        x = rng.uniform(0.0, 1.0, (32 * case["steps"], 32, 32, 3)).astype("float32")
        y = rng.randint(0, 10, 32 * case["steps"]).astype("int32")
        model = models.mobilenet_v2()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    _harness.progress(f"{task}: training step")
    result = {"step_before": _harness.training_step(model, x[:32], y[:32])}
    emit(result)
    log_root = tempfile.mkdtemp(prefix="kns_activity_overhead_")
    times = {"with": [], "without": []}
    writes = {"with": [], "without": []}
    key = {True: "with", False: "without"}
    try:
        _harness.progress(f"{task}: warm-up fit")
        start = time.perf_counter()
        _fit(model, x, y, PROBE[task], (True, False), 2, log_root)
        result["warm_up"] = time.perf_counter() - start
        for repeat in range(case["repeats"]):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            timed, written, methods = _fit(model, x, y, PROBE[task], order, case["epochs"], log_root)
            for activity in order:
                times[key[activity]] += timed[activity]
                writes[key[activity]] += written[activity]
            result.update(methods=methods, times=times, writes=writes)
            _harness.progress(f"{task}: fit {repeat + 1}, on_epoch_end with / without activity: "
                              + ", ".join(f"{1e3 * a:.0f}/{1e3 * b:.0f}"
                                          for a, b in zip(timed[True], timed[False])) + " ms")
            emit(result)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)
    _harness.progress(f"{task}: training step again")
    result["step_after"] = _harness.training_step(model, x[:32], y[:32])
    result["step"] = statistics.median([result["step_before"], result["step_after"]])
    return result


def summary(result):
    """`{"with", "without", "ratio", "paired", "epochs", "write_with", "write_without"}` (seconds)."""
    on, off = result["times"]["with"], result["times"]["without"]
    writes = result.get("writes", {})
    median = lambda v: statistics.median(v) if v else None  # noqa: E731
    return {"with": median(on), "without": median(off), "ratio": median(on) / median(off),
            "paired": statistics.median(a / b for a, b in zip(on, off)), "epochs": len(on),
            "write_with": median(writes.get("with")), "write_without": median(writes.get("without"))}


def table(record):
    lines = ["| task | auto chose | callback per logged epoch, with activity | without | "
             f"with / without: ratio of medians (median of per-epoch ratios), target ≤ {TARGET:.2f}x | "
             "of which the TensorBoard write, with / without | training step |",
             "|---|---|---|---|---|---|---|"]
    for entry in record["cases"]:
        r, c = entry["result"] or {}, entry["case"]
        if not r.get("times", {}).get("with"):
            lines.append(f"| {LABELS[c['task']]} | {entry['status']} | | | | | |")
            continue
        s, step = summary(r), r.get("step") or r.get("step_before")
        chose = ", ".join(f"{w}: {m}" for w, m in sorted(r["methods"].items()))
        verdict = "met" if s["ratio"] <= TARGET else "missed"
        write = (f"{_harness.duration(s['write_with'])} / {_harness.duration(s['write_without'])}"
                 if s["write_with"] is not None else "-")
        lines.append(
            f"| {LABELS[c['task']]} | {chose} | {_harness.duration(s['with'])} "
            f"({_harness.steps(s['with'], step)} steps) | {_harness.duration(s['without'])} "
            f"({_harness.steps(s['without'], step)} steps) | {s['ratio']:.3f}x ({s['paired']:.3f}x): {verdict} "
            f"| {write} | {step * 1e3:.1f} ms |")
    fits = "; ".join(f"{e['case']['task']}: {e['case']['repeats']} fits of {e['case']['epochs']} epochs, "
                     f"{summary(e['result'])['epochs']} paired"
                     for e in record["cases"] if (e["result"] or {}).get("times"))
    lines += ["", "Each fit carries both callbacks (`asynchronous=False`, both wrt, `method=\"auto\"`), their "
              f"order swapped at every fit, the first epoch of each fit left out ({fits}). Steps are training "
              "steps of batch 32 of the same model, measured in the same process."]
    return "\n".join(lines)
