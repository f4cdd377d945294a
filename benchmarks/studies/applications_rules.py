"""keras.applications under the exact engine: which rule serves each layer, and speed.

    .venv/bin/python benchmarks/studies/applications_rules.py rules
        For MobileNetV2 (alpha 0.35), MobileNetV3Small, EfficientNetB0,
        ResNet50, DenseNet121 and ConvNeXtTiny (weights=None, 10 classes,
        32x32x3): per architecture, how many layer calls each rule class
        serves, and every call left to GenericRule (none is the goal).

    .venv/bin/python benchmarks/studies/applications_rules.py speed [--table before]
        MobileNetV2 (alpha 0.35, 32x32x3, 10 classes), default layers, probe
        of 4: seconds per `neuron_sensitivity` call, to inputs and to weights,
        first call (tracing included) and later calls, each as a ratio to one
        training step (batch 32, Adam, after a warm-up) measured in the same
        process. `--table before` serves the layer families that gained a
        closed form in issue 11 (depthwise, pooling, padding, ...) by the
        generic rule again, as before, for the comparison.

Progress goes to stderr, results to stdout. Timings on a shared machine are
noisy: the load average is printed with them. A study, not on the harness:
its conclusions are prose in docs/benchmarks.md and docs/models.md, and
nothing of it is stored.
"""

import argparse
import collections
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: `benchmarks`

from benchmarks._machine import cpu_model, loadavg  # noqa: E402

SHAPE = (32, 32, 3)
ARCHITECTURES = (
    "MobileNetV2",
    "MobileNetV3Small",
    "EfficientNetB0",
    "ResNet50",
    "DenseNet121",
    "ConvNeXtTiny",
)
# The rule classes this comparison switches off with `--table before`: the
# families that only had the generic rule before issue 11. (ActivationRule
# replaced ElementwiseRule for `Activation` layers, an equal closed form.)
NEW_RULES = (
    "DepthwiseConvRule", "SeparableConvRule", "ConvTransposeRule",
    "MaxPoolingRule", "GlobalAveragePoolingRule", "GlobalMaxPoolingRule",
    "ZeroPaddingRule", "CroppingRule", "LinearRule", "BroadcastRule",
    "AffineRule", "LayerScaleRule", "SoftmaxRule",
)


def build(name):
    import keras

    keras.utils.set_random_seed(0)
    kwargs = {"input_shape": SHAPE, "weights": None, "classes": 10}
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return getattr(keras.applications, name)(**kwargs)


def rules():
    from keras_neuron_sensitivity.engine.rules import base, table
    from keras_neuron_sensitivity.probe import build_graph

    for name in ARCHITECTURES:
        print(f"building {name} ...", file=sys.stderr, flush=True)
        graph = build_graph(build(name))
        counts = collections.Counter()
        generic = []
        for call in graph.calls:
            rule = table.rule_for(call.layer)
            counts[type(rule).__name__] += 1
            if rule is base.GENERIC_RULE:
                generic.append(f"{call.key} ({type(call.layer).__name__})")
        print(f"\n{name}: {len(graph.calls)} layer calls")
        for rule_name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {count:4d}  {rule_name}")
        if generic:
            print(f"  GenericRule serves: {', '.join(generic)}")
        else:
            print("  no layer call uses GenericRule")


def speed(which, calls):
    import numpy as np

    from keras_neuron_sensitivity import neuron_sensitivity
    from keras_neuron_sensitivity.engine.rules import base, table

    if which == "before":
        closed = table.rule_for

        def before(layer):
            rule = closed(layer)
            return base.GENERIC_RULE if type(rule).__name__ in NEW_RULES else rule

        table.rule_for = before

    model = build("MobileNetV2")
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 1, (4, *SHAPE)).astype("float32")
    x = rng.uniform(-1, 1, (32, *SHAPE)).astype("float32")
    y = rng.integers(0, 10, 32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    def timed(fn):
        """Wall and CPU seconds (this process, all threads) of `fn()`."""
        wall, cpu = time.perf_counter(), _cpu_seconds()
        fn()
        return time.perf_counter() - wall, _cpu_seconds() - cpu

    def train_step():
        for _ in range(3):  # warm-up (the first traces)
            model.train_on_batch(x, y)
        times = [timed(lambda: model.train_on_batch(x, y)) for _ in range(10)]
        # CPU time ticks in 10 ms steps: the mean of ten, not the median.
        return statistics.median(t[0] for t in times), sum(t[1] for t in times) / 10

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {loadavg()}")
    print(f"rule table: {which}; MobileNetV2 alpha 0.35, 32x32x3, probe 4, default layers")
    print("Each time as seconds and as training steps (wall / CPU: the CPU ratio")
    print("moves less when other work shares the machine).")
    step = train_step()
    print(f"one training step (batch 32, of 10): {step[0] * 1e3:.1f} ms wall (median), "
          f"{step[1] * 1e3:.1f} ms CPU (mean)")
    for wrt in ("inputs", "weights"):
        times = []
        for i in range(calls):
            print(f"{wrt}: call {i + 1} ...", file=sys.stderr, flush=True)
            times.append(timed(lambda: neuron_sensitivity(model, probe, wrt=wrt)))
        for label, picked in (("first call ", times[:1]), ("later calls", times[1:])):
            wall = statistics.median(t[0] for t in picked)
            cpu = statistics.median(t[1] for t in picked)
            print(
                f"wrt={wrt:7s} {label} {wall:8.2f} s wall = {wall / step[0]:6.0f} steps;"
                f" {cpu:8.2f} s CPU = {cpu / step[1]:6.0f} steps",
                flush=True,
            )
    again = train_step()
    print(f"training step again at the end: {again[0] * 1e3:.1f} ms wall, "
          f"{again[1] * 1e3:.1f} ms CPU; load {loadavg()}")


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rules", help="rule classes per architecture")
    timing = sub.add_parser("speed", help="MobileNetV2 timings")
    timing.add_argument("--table", choices=("now", "before"), default="now")
    timing.add_argument("--calls", type=int, default=3, help="calls per wrt (>= 2)")
    args = parser.parse_args()
    if args.command == "speed" and args.calls < 2:
        parser.error(f"--calls {args.calls}: expected at least 2 (a first and a later call)")
    if args.command == "rules":
        rules()
    else:
        speed(args.table, args.calls)


if __name__ == "__main__":
    main()
