"""Weight tangents for the estimator: one shared by the batch, or one per sample?

To weights, the package's estimator (engine/estimate.py) draws one random
tangent over all trainable weights per probe and shares it by the whole probe
batch: one JVP of the batch gives `J_k v` for every sample. Per-sample
independent weight tangents decorrelate the samples (the mean over samples
then averages independent errors) but need one JVP per sample, each on a
batch of 1. This script measures both at equal cost.

Cost. With the package's own `Estimator(graph, keys, ("weights",),
num_probes, memory_budget)`, on a 32-sample probe and on a 1-sample probe,
in the same process after a warm-up call: `t32`, the time of one JVP of the
batch of 32 (a call's time / num_probes) and `t1`, of a batch of 1. The
shared design at m = 32 costs `32 t32`; per-sample tangents with m' probes
per sample cost `32 m' t1`; at equal cost m' = floor(32 t32 / (32 t1)).

Error. The per-neuron mean value (reduction="mean": the mean over samples of
the per-sample value `sqrt(mean_i (J_k v_i)^2)`) against exact, relative,
over neurons with exact > 0 (median and 95th percentile):

  (a) shared, m = 32: the package's estimator on the 32-sample probe
  (b) per-sample, m' probes: each sample estimated on its own (a 1-sample
      probe) with its own seed, then the mean over samples; equal cost
  (b') the same draws as (b), each per-sample value divided by its known
      bias E[sqrt(chi2_m' / m')] (with Gaussian tangents the per-sample
      value is unbiased in the square, so the value itself is biased low:
      -20 % at m'=1, -11 % at m'=2, -1 % at m'=32); equal cost
  (c) per-sample, m = 32: as (b) at 32 probes (32 t1 / t32 times the cost
      of (a); for reference)

on the README's CNN (`benchmarks.models.readme_cnn`, every default layer)
and on MobileNetV2 (`benchmarks.models.mobilenet_v2`: alpha 0.35, 32x32,
weights=None; the first, early, middle and last layers as
benchmarks/estimator.py picks them), probe of 32 uniform random samples,
each design repeated with several seeds. One subprocess per model.

A one-off study, not on the harness: its conclusion (the shared tangent
wins at equal cost, so the package shares it) is stated in
docs/benchmarks.md, and nothing it prints is stored.

    .venv/bin/python benchmarks/studies/estimator_tangents.py            # about 6 min on 2 loaded cores
    .venv/bin/python benchmarks/studies/estimator_tangents.py --quick    # CNN only, 2 repeats
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)  # run as a script: `benchmarks` is importable from the repository

from benchmarks._machine import cpu_model, median_seconds  # noqa: E402
from benchmarks._harness import loadavg  # noqa: E402
RESULT_TAG = "RESULT_JSON "
TITLES = {"c": "README's CNN, 28x28x1", "mobilenet": "MobileNetV2 alpha=0.35, 32x32x3"}
BUILDERS = {"c": "readme_cnn", "mobilenet": "mobilenet_v2"}  # benchmarks.models
DESIGNS = ("a", "b", "d", "c")
LABELS = {
    "a": "(a) shared, m=32",
    "b": "(b) per-sample, m'",
    "d": "(b') (b) debiased",
    "c": "(c) per-sample, m=32",
}
SHARED_PROBES = 32


def per_neuron_mean(squares):
    """`(m, B, C)` squared JVPs -> `(C,)`: mean over samples of sqrt(mean over probes)."""
    import numpy as np

    return np.sqrt(squares.mean(axis=0)).mean(axis=0)


def sqrt_chi2_mean(m):
    """E[sqrt(chi2_m / m)]: the mean of a per-sample value over its exact norm.

    With Gaussian tangents, `m * value^2 / norm^2` is chi-square with `m`
    degrees of freedom; the value itself is biased low by this factor
    (0.80 at m=1, 0.89 at m=2, 0.99 at m=32).
    """
    return math.sqrt(2.0 / m) * math.exp(math.lgamma((m + 1) / 2) - math.lgamma(m / 2))


def worker(opts):
    import numpy as np

    import keras

    from benchmarks import _harness, models
    from benchmarks.estimator import layer_costs, pick_roles
    from keras_neuron_sensitivity import _computation, neuron_sensitivity
    from keras_neuron_sensitivity.api import DEFAULT_MEMORY_BUDGET_MB
    from keras_neuron_sensitivity.engine.estimate import Estimator
    from keras_neuron_sensitivity.engine.replay import Replay

    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[BUILDERS[opts.model]]
    model = build()
    x = models.probe(BUILDERS[opts.model], SHARED_PROBES)
    step = _harness.classifier_step(model, from_logits)
    problem = _computation.prepare(model, x, wrt=("weights",), layers=None)
    if opts.model == "mobilenet":
        replay = Replay(problem.graph, problem.keys)
        widths = [int(v.shape[-1]) for v in replay.target_outputs(replay.run([t[:1] for t in problem.inputs]))]
        roles = pick_roles(list(problem.keys), widths, layer_costs(problem, "weights", problem.keys))
        keys = list(dict.fromkeys(roles.values()))
    else:
        roles, keys = {}, list(problem.keys)
    # The estimator over every default layer, as the package runs it; the
    # errors are read on `keys`.
    graph, all_keys, inputs = problem.graph, problem.keys, problem.inputs
    budget = int(DEFAULT_MEMORY_BUDGET_MB * 2**20)
    batch = int(inputs[0].shape[0])
    samples = [[t[n : n + 1] for t in inputs] for n in range(batch)]

    exact = {}
    start = time.perf_counter()
    for key in keys:
        exact[key] = neuron_sensitivity(model, x, wrt="weights", layers=[key], method="exact")[key]
    exact_seconds = time.perf_counter() - start

    shared = Estimator(graph, all_keys, ("weights",), SHARED_PROBES, budget)
    single32 = Estimator(graph, all_keys, ("weights",), SHARED_PROBES, budget)
    shared(inputs, 0)  # warm-up: traces
    single32(samples[0], 0)
    # Alternated, so that load from other processes shifts both alike; the
    # ratio is the median of the per-pair ratios.
    t32s, t1s = [], []
    for _ in range(opts.timing_repeats):
        t32s.append(median_seconds(lambda: shared(inputs, 1), 1) / SHARED_PROBES)
        t1s.append(median_seconds(lambda: single32(samples[0], 1), 1) / SHARED_PROBES)
    t32, t1 = statistics.median(t32s), statistics.median(t1s)
    ratio = statistics.median(a / b for a, b in zip(t32s, t1s))
    m_equal = max(1, int(batch * ratio // batch))
    single = Estimator(graph, all_keys, ("weights",), m_equal, budget)
    single(samples[0], 0)

    def run_shared(seed):
        out = shared(inputs, seed)["weights"]
        return {k: per_neuron_mean(out[k]) for k in keys}

    def run_per_sample(est, seed):
        parts = [est(s, seed * 1000 + 1 + n)["weights"] for n, s in enumerate(samples)]
        return {k: np.mean([per_neuron_mean(p[k]) for p in parts], axis=0) for k in keys}

    runs = {"a": lambda seed: run_shared(seed * 1000),
            "b": lambda seed: run_per_sample(single, seed),
            "c": lambda seed: run_per_sample(single32, seed)}
    values = {d: [] for d in DESIGNS}
    wall = {d: [] for d in DESIGNS}
    for rep in range(opts.repeats):
        for d in ("a", "b", "c"):
            if d == "c" and rep >= 2:
                continue  # 32 times the cost of (a): two seeds are enough for a reference
            start = time.perf_counter()
            values[d].append(runs[d](rep + 10))
            wall[d].append(time.perf_counter() - start)
    # (b'): the same draws as (b), divided by the known bias of a Gaussian
    # tangent's per-sample value at m' probes (exact zeros stay zero).
    kappa = sqrt_chi2_mean(m_equal)
    values["d"] = [{k: v[k] / kappa for k in keys} for v in values["b"]]
    wall["d"] = wall["b"]

    errors = {}
    for d in DESIGNS:
        errors[d] = {}
        for key in keys:
            ex = np.asarray(exact[key], np.float64)
            live = ex > 0
            per_rep = []
            for v in values[d]:
                est = np.asarray(v[key], np.float64)
                rel = np.abs(est[live] - ex[live]) / ex[live]
                per_rep.append({
                    "median": float(np.median(rel)) if rel.size else None,
                    "p95": float(np.percentile(rel, 95)) if rel.size else None,
                    "bias": float(np.median(est[live] / ex[live]) - 1) if rel.size else None,
                    "rel": rel.tolist(),
                    "dead_equal": bool(np.array_equal(est == 0, ex == 0)),
                })
            errors[d][key] = per_rep
    return {
        "status": "ok", "step": step, "t1": t1, "t32": t32, "ratio": ratio, "m_equal": m_equal, "batch": batch,
        "t1s": t1s, "t32s": t32s,
        "keys": keys, "roles": roles, "widths": {k: int(np.asarray(exact[k]).shape[0]) for k in keys},
        "dead": {k: int((np.asarray(exact[k]) == 0).sum()) for k in keys},
        "exact_seconds": exact_seconds, "wall": wall, "errors": errors, "repeats": opts.repeats,
    }


def fmt_time(seconds):
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def summarize(per_rep, field):
    """The median over repeats of a per-repeat statistic, and its range."""
    values = [r[field] for r in per_rep if r[field] is not None]
    if not values:
        return None, "-"
    med = statistics.median(values)
    return med, f"{100 * med:.1f} % [{100 * min(values):.1f}-{100 * max(values):.1f}]"


def print_model(name, r):
    import numpy as np

    step, t1, t32, m, batch = r["step"], r["t1"], r["t32"], r["m_equal"], r["batch"]
    print(f"Model ({name}) {TITLES[name]}, probe {batch}, wrt weights; one training step of batch 32: {fmt_time(step)}")
    print(
        f"  one JVP (weight tangent), in the same process after a warm-up: batch of 1 {fmt_time(t1)}, "
        f"batch of {batch} {fmt_time(t32)} (medians of {len(r['t1s'])} calls of {SHARED_PROBES} probes / "
        f"{SHARED_PROBES}, the two alternated; per-pair ratios "
        f"{', '.join(f'{a / b:.1f}' for a, b in zip(r['t32s'], r['t1s']))}, median {r['ratio']:.1f}x)"
    )
    costs = {"a": SHARED_PROBES * t32, "b": batch * m * t1, "d": batch * m * t1, "c": batch * SHARED_PROBES * t1}
    print(
        f"  equal cost: {SHARED_PROBES} shared probes cost {SHARED_PROBES} x t{batch}, per-sample ones "
        f"{batch} x m' x t1, so m' = floor({SHARED_PROBES} x t{batch} / ({batch} x t1)) = floor({r['ratio']:.2f}) "
        f"= {m} probe(s) per sample"
    )
    print(
        f"  exact reference on {len(r['keys'])} layer(s): {r['exact_seconds']:.1f} s "
        f"({r['exact_seconds'] / step:,.0f} steps, tracing included)"
    )
    head = (
        f"    {'design':<22} {'cost (model)':>13} {'(steps)':>8} {'measured wall':>14}  "
        f"{'layer':<24} {'C':>4} {'median err':>19} {'95th pct err':>20} {'median est/exact-1':>18} {'dead eq.':>8}"
    )
    print(head)
    print("    " + "-" * (len(head) - 4))
    role_of = {v: k for k, v in r["roles"].items()}
    labels = {**LABELS, "b": f"(b) per-sample, m'={m}", "d": f"(b') per-sample, m'={m}, debiased"}
    pooled = {}
    for d in DESIGNS:
        wall = statistics.median(r["wall"][d])
        first = True
        for key in r["keys"]:
            reps = r["errors"][d][key]
            _, medc = summarize(reps, "median")
            _, p95c = summarize(reps, "p95")
            bias, _ = summarize(reps, "bias")
            dead_eq = all(x["dead_equal"] for x in reps)
            label = key + (f" ({role_of[key]})" if key in role_of else "")
            lead = (
                f"{labels[d]:<22} "
                f"{fmt_time(costs[d]):>13} {costs[d] / step:>8.1f} {fmt_time(wall):>14}"
                if first else f"{'':<22} {'':>13} {'':>8} {'':>14}"
            )
            print(
                f"    {lead}  {label[:24]:<24} {r['widths'][key]:>4} {medc:>19} {p95c:>20} "
                f"{100 * bias:>16.1f} % {'yes' if dead_eq else 'NO':>8}"
            )
            first = False
        # Pooled over the layers, per repeat; then the median over repeats.
        per_rep = []
        for i in range(len(r["wall"][d])):
            rel = np.concatenate([np.asarray(r["errors"][d][k][i]["rel"]) for k in r["keys"]])
            per_rep.append({"median": float(np.median(rel)), "p95": float(np.percentile(rel, 95)), "bias": None})
        pooled[d] = per_rep
        med, medc = summarize(per_rep, "median")
        p95, p95c = summarize(per_rep, "p95")
        print(f"    {'':<22} {'':>13} {'':>8} {'':>14}  {'pooled':<24} {'':>4} {medc:>19} {p95c:>20}")
    print(
        f"    (median / 95th percentile over the layer's neurons with exact > 0, per repeat; the median over "
        f"{r['repeats']} repeats (independent seeds; 2 at most for (c)), the range in brackets; median est/exact-1: the bias "
        "of the per-neuron mean value, median over neurons; cost (model): from the measured JVP times; "
        "measured wall: the design's own calls, median over repeats)"
    )
    wall_a, wall_b = statistics.median(r["wall"]["a"]), statistics.median(r["wall"]["b"])
    print(
        f"  measured walls: (b) took {wall_b / wall_a:.1f}x (a)'s time ({fmt_time(wall_b)} vs {fmt_time(wall_a)}): "
        f"its {batch} calls of {m} probe(s) each pay the estimator's fixed cost per call, which the JVP times "
        f"(calls of {SHARED_PROBES} probes) spread thinner"
    )
    stats = {d: (summarize(pooled[d], "median")[0], summarize(pooled[d], "p95")[0]) for d in DESIGNS}
    verdicts = []
    for other in ("b", "d"):
        (a_med, a_p95), (o_med, o_p95) = stats["a"], stats[other]
        name = labels[other].split(" ")[0]
        if a_med <= o_med and a_p95 <= o_p95:
            verdicts.append(f"(a) beats {name}")
        elif o_med <= a_med and o_p95 <= a_p95:
            verdicts.append(f"{name} beats (a)")
        else:
            verdicts.append(
                f"(a) vs {name} mixed: " + ("(a)" if a_med < o_med else name) + " has the lower median, "
                + ("(a)" if a_p95 < o_p95 else name) + " the lower 95th percentile"
            )
    verdict = "; ".join(verdicts)
    print(
        "  at equal cost (pooled): " + "; ".join(
            f"{labels[d].split(' ')[0]} median {100 * stats[d][0]:.1f} %, 95th {100 * stats[d][1]:.1f} %"
            for d in ("a", "b", "d")
        ) + f" -> {verdict}"
    )
    print(flush=True)
    return verdict


def run_worker(opts, name):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", "--model", name,
        "--repeats", str(opts.repeats), "--timing-repeats", str(opts.timing_repeats),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    print(f"  [{name}] ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        print(" timeout", file=sys.stderr)
        return None, f"timed out after {opts.timeout:.0f} s"
    print(f" {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), ""
    tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-15:]
    return None, f"failed (exit {proc.returncode}):\n      " + "\n      ".join(tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CNN only, 2 repeats")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(TITLES)}")
    parser.add_argument("--repeats", type=int, default=None, help="seeds per design (default 4; --quick 2)")
    parser.add_argument("--timing-repeats", type=int, default=5, help="alternated timed calls per JVP time")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per model")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.repeats is None:
        opts.repeats = 2 if opts.quick else 4
    if opts.worker:
        print(RESULT_TAG + json.dumps(worker(opts)), flush=True)
        return

    models = opts.models or ("c" if opts.quick else ",".join(TITLES))
    models = [m.strip() for m in models.split(",") if m.strip()]
    for m in models:
        if m not in TITLES:
            parser.error(f"unknown model {m!r}; expected a subset of {','.join(TITLES)}")
    start = time.perf_counter()
    print("estimator_tangents.py: weight tangents shared by the batch vs one per sample, at equal cost")
    print(f"  load average at start: {loadavg()} (other processes on the machine skew timings)")
    print(f"  CPU: {cpu_model()}; {os.cpu_count()} cores; probe of 32 uniform random samples; "
          f"{opts.repeats} repeats (seeds) per design")
    print(flush=True)
    verdicts = []
    for name in models:
        result, note = run_worker(opts, name)
        if result is None:
            print(f"Model ({name}) {TITLES[name]}: {note}\n")
            continue
        verdicts.append((name, print_model(name, result)))
    print("Which design wins at equal cost:")
    for name, verdict in verdicts:
        print(f"  ({name}) {verdict}")
    print(f"\nTotal wall time: {time.perf_counter() - start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
