"""What `method="auto"` picks, against the measured times of both methods.

For each model (every default layer, `num_probes=32`, uniform random probe)
and each `wrt`: the steady time of `neuron_sensitivity(method="exact")` and
of `method="estimate"` (median of up to three calls after a warm-up call),
both as multiples of one training step of batch 32 of the same model
(Adam, random labels, measured in the same process), the costs that
`cost.predict_costs` predicts, and what `auto` picks. Auto should pick
exact wherever exact measures at most `EXACT_PREFERENCE` (2) times the
estimate; the last column says whether it did.

    .venv/bin/python benchmarks/auto_choice.py                  # about 3 min
    .venv/bin/python benchmarks/auto_choice.py digits mobilenetv2
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _machine import cpu_model, loadavg  # noqa: E402
from keras_neuron_sensitivity import _computation, neuron_sensitivity  # noqa: E402
from keras_neuron_sensitivity.engine import methods, cost  # noqa: E402


def mlp(widths):
    layers = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation="relu") for w in widths[1:-1]]
    return keras.Sequential(layers + [keras.layers.Dense(widths[-1], activation="softmax")])


def cnn():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def mobilenetv2():
    return keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10
    )


CASES = {
    "tiny": ("MLP 4-8-3", lambda: mlp([4, 8, 3]), 16),
    "digits": ("MLP 64-128-64-10 (the demo's)", lambda: mlp([64, 128, 64, 10]), 128),
    "mnist_mlp": ("MLP 784-512-256-128-10", lambda: mlp([784, 512, 256, 128, 10]), 32),
    "cnn": ("CNN Conv16-pool-Conv32-GAP-Dense10, 28x28x1", cnn, 64),
    "mobilenetv2": ("MobileNetV2 alpha 0.35, 32x32", mobilenetv2, 4),
}


def seconds(fn, calls=3, limit=20.0):
    fn()  # warm-up: tracing
    times = []
    while len(times) < calls and sum(times) < limit:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model, shape):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (32, *shape)).astype("float32")
    y = rng.integers(0, model.output_shape[-1], 32)
    weights = model.get_weights()
    step = seconds(lambda: model.train_on_batch(x, y), calls=10)
    model.set_weights(weights)
    return step


def main(names):
    print("auto_choice.py: what method='auto' picks against the measured times")
    print(f"  machine: {cpu_model()}; load average at start: {loadavg()}")
    print("  times: steady calls, every default layer, num_probes=32; steps = one training step, batch 32\n")
    print("| model, probe | wrt | exact | estimate | ratio | predicted ratio | auto | right |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        title, build, batch = CASES[name]
        keras.utils.set_random_seed(0)
        model = build()
        shape = model.input_shape[1:]
        step = training_step(model, shape)
        x = np.random.default_rng(0).uniform(0, 1, (batch, *shape)).astype("float32")
        for wrt in ("weights", "inputs"):
            measured = {
                method: seconds(
                    lambda method=method: neuron_sensitivity(
                        model, x, wrt=wrt, method=method, seed=1
                    )
                )
                for method in ("exact", "estimate")
            }
            problem = _computation.prepare(model, x, wrt=(wrt,), layers=None)
            costs = cost.predict_costs(
                problem.graph, problem.keys, wrt, problem.inputs, methods.DEFAULT_NUM_PROBES
            )
            auto = neuron_sensitivity(model, x, wrt=wrt, method="auto").method
            ratio = measured["exact"] / measured["estimate"]
            should = "exact" if ratio <= cost.EXACT_PREFERENCE else "estimate"
            cells = [
                f"{1000 * measured[m]:,.0f} ms ({measured[m] / step:,.1f} steps)"
                for m in ("exact", "estimate")
            ]
            print(
                f"| {title}, {batch} | {wrt} | {cells[0]} | {cells[1]} | {ratio:.2f} "
                f"| {costs['exact'] / costs['estimate']:.2f} | {auto} "
                f"| {'yes' if auto == should else 'no'} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
