"""What NeuronSensitivityCallback adds to model.fit on the digits MLP (issue 20 item 5: at most 1.05x).

The digits task (sklearn's load_digits, /16; `models.digits_mlp`, Adam,
batch 32, probe of 128, the callback at its defaults), in one TensorFlow
process. Configurations run alternately, from the same seeds, `--repeats`
times (pairs of fresh fits, so that drift in the machine's load hits all
alike):

  none          no callback
  asynchronous  NeuronSensitivityCallback (defaults)
  synchronous   the same, asynchronous=False
  tensorboard   keras.callbacks.TensorBoard(histogram_freq=1)

A warm-up fit of each configuration on a throwaway model comes first, so
one-time process costs are in none of them; each configuration's per-model
tracing is, as a user pays it. Checked on every run: the weights after
`fit` equal the plain run's bit for bit, and every epoch is readable by
`load_sensitivity` when `fit` returns.

Quick: 3 epochs, 3 pairs, none and asynchronous. Full: 6 epochs, 9 pairs,
all four.
"""

import shutil
import statistics
import tempfile
import time

from benchmarks import _harness

CONFIGS = ("none", "asynchronous", "synchronous", "tensorboard")
LABELS = {
    "none": "no callback",
    "asynchronous": "`NeuronSensitivityCallback` (defaults: asynchronous)",
    "synchronous": "the same, `asynchronous=False`",
    "tensorboard": "`keras.callbacks.TensorBoard(histogram_freq=1)`",
}
TARGET = 1.05


def arguments(parser):
    parser.add_argument("--epochs", type=int, default=None, help="default 6 (quick 3)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating pairs (default 9, quick 3)")
    parser.add_argument("--probe-size", type=int, default=128)


def cases(args):
    return [{
        "backend": "tensorflow",
        "epochs": args.epochs or (3 if args.quick else 6),
        "repeats": args.repeats or (3 if args.quick else 9),
        "probe_size": args.probe_size,
        "configs": list(CONFIGS[:2] if args.quick else CONFIGS),
    }]


def _fit(config, x, y, case, log_root):
    import keras
    import numpy as np

    from benchmarks import models
    from keras_neuron_sensitivity import NeuronSensitivityCallback, load_sensitivity

    keras.utils.set_random_seed(0)
    model = models.digits_mlp()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    log_dir = tempfile.mkdtemp(dir=log_root)
    callbacks, callback = [], None
    if config == "tensorboard":
        callbacks.append(keras.callbacks.TensorBoard(log_dir, histogram_freq=1))
    elif config in ("asynchronous", "synchronous"):
        callback = NeuronSensitivityCallback(x[: case["probe_size"]], log_dir=log_dir, seed=0,
                                             asynchronous=config == "asynchronous")
        callbacks.append(callback)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=32, epochs=case["epochs"], verbose=0, callbacks=callbacks)
    out = {"time": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    weights = [np.array(w) for w in model.get_weights()]
    if callback is not None:
        logged = load_sensitivity(log_dir)
        out["readable"] = all(sorted(per_step) == list(range(case["epochs"]))
                              for per_layer in logged.values() for per_step in per_layer.values())
        out["waited"] = callback.waited
        out["methods"] = {w: v.method for w, v in callback.sensitivities[0].items()}
    shutil.rmtree(log_dir, ignore_errors=True)
    return out, weights


def measure(case, emit):
    import numpy as np

    from benchmarks import models

    x, y = models.digits()
    configs = case["configs"]
    log_root = tempfile.mkdtemp(prefix="kns_fit_overhead_")
    runs = {c: [] for c in configs}
    result = {"runs": runs, "identical_weights": True}
    try:
        for config in configs:  # warm-up: throwaway models, one epoch each
            _harness.progress(f"warm-up: {config}")
            _fit(config, x, y, {**case, "epochs": 1}, log_root)
        for repeat in range(case["repeats"]):
            reference = None
            for config in configs:
                out, weights = _fit(config, x, y, case, log_root)
                if reference is None:
                    reference = weights
                elif not all(np.array_equal(a, b) for a, b in zip(weights, reference)):
                    result["identical_weights"] = False
                runs[config].append(out)
                _harness.progress(f"pair {repeat + 1}: {config} {out['time']:.2f} s")
            emit(result)
    finally:
        shutil.rmtree(log_root, ignore_errors=True)
    return result


def summary(record):
    """`{config: {"median", "ratio", "paired", "cpu", "waited"}}` of a stored result."""
    runs = record["cases"][0]["result"]["runs"]
    base = runs["none"]
    base_time = statistics.median(r["time"] for r in base)
    base_cpu = statistics.median(r["cpu"] for r in base)
    out = {}
    for config, rs in runs.items():
        n = min(len(rs), len(base))
        med = statistics.median(r["time"] for r in rs)
        out[config] = {
            "median": med, "ratio": med / base_time, "pairs": n,
            "paired": statistics.median(rs[i]["time"] / base[i]["time"] for i in range(n)),
            "cpu": statistics.median(r["cpu"] for r in rs) / base_cpu - 1,
            "waited": statistics.median(r["waited"] for r in rs) if "waited" in rs[0] else None,
        }
    return out


def table(record):
    case = record["cases"][0]
    result = case["result"]
    stats = summary(record)
    lines = [
        "| configuration | `fit` time, median | with / without: ratio of medians (median of paired ratios) "
        "| waited in the callback, per fit | extra CPU time |",
        "|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        if config not in stats:
            continue
        s = stats[config]
        waited = "" if s["waited"] is None else f"{s['waited'] * 1e3:.0f} ms ({100 * s['waited'] / s['median']:.1f} %)"
        cpu = "" if config == "none" else f"{100 * s['cpu']:+.0f} %"
        lines.append(f"| {LABELS[config]} | {s['median']:.2f} s | {s['ratio']:.3f}x ({s['paired']:.3f}x) "
                     f"| {waited} | {cpu} |")
    ours = stats.get("asynchronous")
    c = case["case"]
    readable = all(r.get("readable", True) for rs in result["runs"].values() for r in rs)
    lines += [
        "",
        f"Digits MLP, {c['epochs']} epochs, probe of {c['probe_size']}, {ours['pairs']} alternating runs "
        f"of each configuration. Target (issue 20 item 5): at most {TARGET:.2f}x by the medians of at least "
        f"9 pairs: {ours['ratio']:.3f}x, {'met' if ours['ratio'] <= TARGET else 'missed'}"
        + ("" if ours["pairs"] >= 9 else f" (only {ours['pairs']} pairs: a quick run)")
        + f". Weights bit-identical to the plain fit: {'yes' if result['identical_weights'] else 'no'}; "
        f"every epoch readable when `fit` returned: {'yes' if readable else 'no'}.",
    ]
    return "\n".join(lines)
