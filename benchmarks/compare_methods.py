"""Exact per-neuron Jacobian norms: this engine against the other ways to get them.

For each model, side by side, in one run:

  engine      `neuron_sensitivity(model, x, wrt=..., reduction=None)`
  bare sweep  a hand-written chain-of-matmuls reverse sweep for a Dense-ReLU
              stack in one tf.function (MLPs only): the floor the engine is
              compared with
  jacobian    `tf.GradientTape.jacobian` (pfor) of every selected layer's
              neuron values with respect to all trainable weights, whole batch,
              in a tf.function; `batch_jacobian` for the inputs. Skipped, with
              its estimated memory, when the estimate is over a limit
  naive       one `tape.gradient` per neuron and sample (each call compiled:
              forward + backward of one sample); a measured subset, extrapolated

Every (model, method) runs in a fresh subprocess (this script re-invoked with
`--worker`), so the peak RSS (`ru_maxrss`) it reports is that method's own.
Values are compared with the engine's, per sample and neuron.

    .venv/bin/python benchmarks/compare_methods.py            # 5-7 min on 2 cores
    .venv/bin/python benchmarks/compare_methods.py --quick    # about 4 min
    .venv/bin/python benchmarks/compare_methods.py --models a,b --methods engine,bare

Progress goes to stderr, the tables to stdout.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import loadavg, machine_info

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    "a": {"title": "MLP 64-256-128-64-10", "kind": "mlp", "sizes": [64, 256, 128, 64, 10], "batch": 32},
    "b": {"title": "MLP 784-512-256-128-10", "kind": "mlp", "sizes": [784, 512, 256, 128, 10], "batch": 64},
    "c": {
        "title": "CNN Conv(32,3)-Conv(64,3)-Pool(2)-Flatten-Dense(128)-Dense(10) on 28x28x1",
        "kind": "cnn",
        "batch": 64,
    },
}
METHODS = ("engine", "bare", "jacobian", "naive")
LABELS = {
    "engine": "engine (this package)",
    "bare": "bare sweep (floor)",
    "jacobian": "tape.jacobian (pfor)",
    "naive": "1 gradient/neuron/sample",
}
RESULT_TAG = "RESULT_JSON "
REL_TOL_WARN = 1e-3  # observation threshold
REL_TOL_FAIL = 2e-3  # reported prominently


# =============================================================================
# Worker: one (model, method, wrt) in this process
# =============================================================================


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build_model(name):
    import keras
    import numpy as np

    spec = MODELS[name]
    keras.utils.set_random_seed(0)
    if spec["kind"] == "mlp":
        sizes = spec["sizes"]
        layers = [keras.Input((sizes[0],))]
        for i, width in enumerate(sizes[1:]):
            last = i == len(sizes) - 2
            layers.append(
                keras.layers.Dense(width, activation=None if last else "relu", name=f"dense{i + 1}")
            )
        input_shape = (sizes[0],)
    else:
        layers = [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(64, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense1"),
            keras.layers.Dense(10, name="dense2"),
        ]
        input_shape = (28, 28, 1)
    model = keras.Sequential(layers, name=f"model_{name}")
    x = np.random.RandomState(1).uniform(0.0, 1.0, (spec["batch"], *input_shape)).astype("float32")
    selected = [layer for layer in model.layers if layer.trainable_weights]
    return model, x, selected


def neuron_values(y):
    """(B, ..., C) -> (B, C): the mean over every axis but batch and channel."""
    import tensorflow as tf

    axes = list(range(1, y.shape.rank - 1))
    return tf.reduce_mean(y, axis=axes) if axes else y


def time_calls(fn, min_repeats, max_repeats, budget_s):
    """First call (tracing), then the median of steady calls."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), times, out


def run_engine(model, x, selected, wrt, opts):
    from keras_neuron_sensitivity import neuron_sensitivity

    def call():
        return neuron_sensitivity(model, x, wrt=wrt, reduction=None)

    first, steady, times, out = time_calls(call, opts.min_repeats, opts.max_repeats, opts.budget)
    names = [layer.name for layer in selected]
    note = ""
    if sorted(out) != sorted(names):
        note = f"engine layer keys {sorted(out)} != expected {sorted(names)}"
    values = {k: v for k, v in out.items()}
    return {"status": "ok", "first": first, "steady": steady, "times": times, "note": note}, values


def make_bare(model, x, wrt):
    """Chain-of-matmuls reverse sweep for a Dense(-ReLU) stack.

    For each target layer t: cotangents (K, B, C) start from the diagonal
    d_k e_k (d = relu'(z_t)), go back with G_h = G_z @ W^T, G_z = G_h * relu'(z),
    and every layer adds ||h_in||^2 ||G_z||^2 + ||G_z||^2 (kernel + bias); for
    the inputs, one more hop G_x = G_z @ W_1^T and its squared norm.
    """
    import tensorflow as tf

    dense = [layer for layer in model.layers if layer.trainable_weights]
    if any(type(layer).__name__ != "Dense" for layer in dense):
        return None, dense
    kernels = [layer.kernel.value for layer in dense]
    biases = [layer.bias.value for layer in dense]
    relu = [layer.activation.__name__ == "relu" for layer in dense]
    n_layers = len(dense)

    @tf.function(autograph=False)
    def sweep(x):
        hs, masks = [x], []
        for i in range(n_layers):
            z = tf.matmul(hs[-1], kernels[i]) + biases[i]
            if relu[i]:
                mask = tf.cast(z > 0, z.dtype)
                hs.append(z * mask)
            else:
                mask = tf.ones_like(z)
                hs.append(z)
            masks.append(mask)
        h_sq = [tf.reduce_sum(tf.square(h), axis=1) + 1.0 for h in hs]  # ||h||^2 + 1 (bias)
        results = []
        for t in range(n_layers):
            d = tf.transpose(masks[t])  # (K, B): the diagonal of G_z at the seed
            sq = h_sq[t][None, :] * tf.square(d) if wrt == "weights" else None
            if t == 0 and wrt == "inputs":
                g_x = d[:, :, None] * tf.transpose(kernels[0])[:, None, :]
                sq = tf.reduce_sum(tf.square(g_x), axis=-1)
            elif t > 0:
                # First hop from the diagonal: G_h[k, n, :] = d[k, n] * W_t[:, k].
                g_h = d[:, :, None] * tf.transpose(kernels[t])[:, None, :]
                for i in range(t - 1, -1, -1):
                    g_z = g_h * masks[i][None]
                    k, b, c = tf.shape(g_z)[0], tf.shape(g_z)[1], g_z.shape[2]
                    if wrt == "weights":
                        sq += h_sq[i][None, :] * tf.reduce_sum(tf.square(g_z), axis=-1)
                        if i == 0:
                            break
                    flat = tf.matmul(tf.reshape(g_z, [-1, c]), kernels[i], transpose_b=True)
                    g_h = tf.reshape(flat, [k, b, -1])
                if wrt == "inputs":
                    sq = tf.reduce_sum(tf.square(g_h), axis=-1)
            results.append(tf.transpose(tf.sqrt(sq)))  # (B, K)
        return results

    xt = tf.constant(x)

    def call():
        return [r.numpy() for r in sweep(xt)]

    return call, dense


def run_bare(model, x, selected, wrt, opts):
    call, dense = make_bare(model, x, wrt)
    if call is None:
        return {"status": "not_run", "reason": "Dense stacks only"}, None
    first, steady, times, out = time_calls(call, opts.min_repeats, opts.max_repeats, opts.budget)
    values = {layer.name: v for layer, v in zip(dense, out)}
    return {"status": "ok", "first": first, "steady": steady, "times": times}, values


def run_paired(model, x, selected, wrt, opts):
    """Engine and bare sweep called alternately in one process.

    Load from other processes shifts both alike, so the median of the
    per-pair ratios is a steadier engine/bare figure than two separate runs.
    """
    from keras_neuron_sensitivity import neuron_sensitivity

    bare, _ = make_bare(model, x, wrt)
    if bare is None:
        return {"status": "not_run", "reason": "Dense stacks only"}, None

    def engine():
        return neuron_sensitivity(model, x, wrt=wrt, reduction=None)

    for _ in range(3):  # tracing and warm-up, both
        engine()
        bare()
    ratios, engine_times, bare_times = [], [], []
    for _ in range(opts.pairs):
        start = time.perf_counter()
        engine()
        t_engine = time.perf_counter() - start
        start = time.perf_counter()
        bare()
        t_bare = time.perf_counter() - start
        engine_times.append(t_engine)
        bare_times.append(t_bare)
        ratios.append(t_engine / t_bare)
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "status": "ok",
        "ratio": statistics.median(ratios),
        "ratio_q1": quartiles[0],
        "ratio_q3": quartiles[2],
        "engine": statistics.median(engine_times),
        "bare": statistics.median(bare_times),
        "pairs": opts.pairs,
    }, None


def jacobian_estimate(model, x, selected, wrt):
    """Bytes pfor is expected to need, and the cruder B * C_total * P * 4 * 3.

    pfor holds, per selected layer l, the Jacobian block (B, C_l, *W.shape) of
    every weight upstream of l (downstream weights are unconnected: None), or
    (B, C_l, *input_shape) for the inputs, plus one cotangent per neuron for
    every upstream activation (B, C_l, *activation_shape). The estimate is
    twice their sum: the peak RSS measured on model (a) (weights) and on
    model (c) (inputs) was 1.6-2x the sum.
    """
    import numpy as np

    batch = x.shape[0]
    widths = [int(layer.output.shape[-1]) for layer in selected]
    total_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    inputs = int(np.prod(x.shape[1:]))
    upstream_params, upstream_acts, params, acts = [], [], 0, inputs
    for layer in model.layers:
        params += sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
        acts += int(np.prod(layer.output.shape[1:]))
        if layer in selected:
            upstream_params.append(params)
            upstream_acts.append(acts)
    blocks = upstream_params if wrt == "weights" else [inputs] * len(widths)
    exact = 4 * batch * sum(c * (p + a) for c, p, a in zip(widths, blocks, upstream_acts))
    crude = 4 * batch * sum(widths) * (total_params if wrt == "weights" else inputs)
    return 2 * exact, 3 * crude


def run_jacobian(model, x, selected, wrt, opts):
    import keras
    import tensorflow as tf

    estimate, crude = jacobian_estimate(model, x, selected, wrt)
    info = {"estimate_gib": estimate / 2**30, "crude_gib": crude / 2**30}
    if estimate > opts.jacobian_limit_gib * 2**30:
        return {
            "status": "not_run",
            "reason": (
                f"not run: needs ~{estimate / 2**30:,.0f} GiB (estimate"
                + (f"; B*C_total*P*4*3 = {crude / 2**30:,.0f} GiB" if wrt == "weights" else "")
                + f") > limit {opts.jacobian_limit_gib:g} GiB"
            ),
            **info,
        }, None
    probe = keras.Model(model.inputs, [layer.output for layer in selected])
    weights = [v.value for v in model.trainable_weights]

    @tf.function
    def jac(x):
        norms = []
        with tf.GradientTape(persistent=True) as tape:
            if wrt == "inputs":
                tape.watch(x)
            outs = probe(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            values = [neuron_values(y) for y in outs]
        for a in values:
            if wrt == "weights":
                blocks = tape.jacobian(a, weights)  # each (B, C_l, *W.shape) or None
            else:
                blocks = [tape.batch_jacobian(a, x)]  # (B, C_l, *input_shape)
            sq = [
                tf.reduce_sum(tf.square(j), axis=list(range(2, j.shape.rank)))
                for j in blocks
                if j is not None
            ]
            norms.append(tf.sqrt(tf.add_n(sq)))
        return norms

    xt = tf.constant(x)

    def call():
        return [r.numpy() for r in jac(xt)]

    # A few seconds per call at most: fewer repeats.
    first, steady, times, out = time_calls(call, min(opts.min_repeats, 3), 5, opts.budget)
    values = {layer.name: v for layer, v in zip(selected, out)}
    return {"status": "ok", "first": first, "steady": steady, "times": times, **info}, values


def run_naive(model, x, selected, wrt, opts):
    """One compiled gradient per (neuron, sample): a measured subset, extrapolated."""
    import keras
    import tensorflow as tf

    weights = [v.value for v in model.trainable_weights]
    functions = []
    for layer in selected:
        sub = keras.Model(model.inputs, layer.output)

        def grad_norm(x1, k, sub=sub):
            if wrt == "inputs":
                with tf.GradientTape() as tape:
                    tape.watch(x1)
                    a = neuron_values(sub(x1, training=False))[0, k]
                grads = [tape.gradient(a, x1)]
            else:
                with tf.GradientTape() as tape:
                    a = neuron_values(sub(x1, training=False))[0, k]
                grads = tape.gradient(a, weights)
            return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads if g is not None]))

        functions.append((grad_norm, tf.function(grad_norm)))
    samples = [tf.constant(x[n : n + 1]) for n in range(x.shape[0])]
    widths = [int(layer.output.shape[-1]) for layer in selected]
    ks = [tf.constant(k, tf.int32) for k in range(max(widths))]

    # Eager (no tf.function), as a user's loop would run it: a few calls per
    # layer on sample 0, extrapolated per layer.
    eager_total = 0.0
    for (eager, _), c in zip(functions, widths):
        n = min(c, opts.naive_eager_calls)
        eager(samples[0], ks[0])  # first eager call of this layer: not timed
        start = time.perf_counter()
        for k in range(n):
            eager(samples[0], ks[k]).numpy()
        eager_total += (time.perf_counter() - start) / n * c * x.shape[0]
    functions = [compiled for _, compiled in functions]

    start = time.perf_counter()
    for f in functions:  # tracing: one per layer
        f(samples[0], ks[0]).numpy()
    tracing = time.perf_counter() - start

    n_samples = min(opts.naive_samples, x.shape[0])
    rows = {layer.name: [] for layer in selected}
    start = time.perf_counter()
    for n in range(n_samples):
        for layer, f, c in zip(selected, functions, widths):
            rows[layer.name].append([f(samples[n], ks[k]) for k in range(c)])
    measured = time.perf_counter() - start
    calls = n_samples * sum(widths)
    total = measured * x.shape[0] / n_samples
    values = {
        name: tf.stack([tf.stack(r) for r in per_sample]).numpy() for name, per_sample in rows.items()
    }
    return {
        "status": "ok",
        "first": tracing,
        "steady": total,
        "extrapolated": True,
        "measured_s": measured,
        "measured_calls": calls,
        "total_calls": x.shape[0] * sum(widths),
        "samples_measured": n_samples,
        "per_call_ms": 1e3 * measured / calls,
        "eager_s": eager_total,
        "eager_calls": opts.naive_eager_calls,
    }, values


def worker(opts):
    import numpy as np
    import tensorflow as tf

    model, x, selected = build_model(opts.model)
    model(tf.constant(x), training=False)  # every kernel used once
    base_rss = peak_rss_mib()
    runner = {
        "engine": run_engine,
        "bare": run_bare,
        "jacobian": run_jacobian,
        "naive": run_naive,
        "paired": run_paired,
    }
    result, values = runner[opts.method](model, x, selected, opts.wrt, opts)
    result.update(
        {
            "rss_peak_mib": peak_rss_mib(),
            "rss_base_mib": base_rss,
            "widths": {layer.name: int(layer.output.shape[-1]) for layer in selected},
            "n_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        }
    )
    if values is not None:
        np.savez(opts.out, **values)
        result["values_file"] = opts.out
    print(RESULT_TAG + json.dumps(result), flush=True)


# =============================================================================
# Driver: runs the workers, compares, prints
# =============================================================================


def run_worker(model, method, wrt, opts, tmp):
    out = os.path.join(tmp, f"{model}_{method}_{wrt}.npz")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--model", model,
        "--method", method,
        "--wrt", wrt,
        "--out", out,
        "--min-repeats", str(opts.min_repeats),
        "--max-repeats", str(opts.max_repeats),
        "--budget", str(opts.budget),
        "--naive-samples", str(opts.naive_samples),
        "--naive-eager-calls", str(opts.naive_eager_calls),
        "--pairs", str(opts.pairs),
        "--jacobian-limit-gib", str(opts.jacobian_limit_gib),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    print(f"  [{model}] {method:<8} wrt={wrt:<7} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        print(" timeout", file=sys.stderr)
        return {"status": "error", "reason": f"timed out after {opts.timeout:.0f} s"}
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if result is None:
        if proc.returncode < 0:
            reason = f"killed by signal {-proc.returncode} (out of memory?)"
        else:
            tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["no output"]
            reason = f"failed (exit {proc.returncode}): {tail[0][:150]}"
        return {"status": "error", "reason": reason, "stderr": proc.stderr[-3000:]}
    if "while_loop" in proc.stderr:
        result["pfor_while_loop"] = True
    if result.get("values_file"):
        import numpy as np

        with np.load(result["values_file"]) as data:
            result["values"] = {k: data[k] for k in data.files}
    return result


def compare(values, reference):
    """Max relative difference over samples and neurons, and where it is.

    |v - ref| / max(|ref|, 1e-6 * max|ref| of the layer), over the samples
    both have (the naive method has the first few only). Also counts neurons
    exactly zero in one and not in the other (dead-neuron disagreements).
    """
    import numpy as np

    worst, where, zero_mismatch = 0.0, "", 0
    for key, ref in reference.items():
        if key not in values:
            return float("inf"), f"layer {key} missing", 0
        v = np.asarray(values[key], np.float64)
        r = np.asarray(ref, np.float64)[: v.shape[0]]
        if v.shape != r.shape:
            return float("inf"), f"{key}: shape {v.shape} != {r.shape}", 0
        floor = max(1e-6 * float(np.abs(r).max()), 1e-30)
        rel = np.abs(v - r) / np.maximum(np.abs(r), floor)
        zero_mismatch += int(np.sum((v == 0) != (r == 0)))
        i = np.unravel_index(int(np.argmax(rel)), rel.shape)
        if rel[i] > worst:
            worst, where = float(rel[i]), f"{key}[sample {i[0]}, neuron {i[1]}]: {v[i]:.6g} vs engine {r[i]:.6g}"
    return worst, where, zero_mismatch


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def model_table(name, results, alerts):
    spec = MODELS[name]
    any_result = next((r for r in results.values() if "widths" in r), None)
    desc = ""
    if any_result:
        widths = any_result["widths"]
        desc = (
            f": {sum(widths.values())} neurons in {len(widths)} layers "
            f"({', '.join(f'{k} {v}' for k, v in widths.items())}), "
            f"{any_result['n_params']:,} trainable params"
        )
    lines = [f"Model ({name}) {spec['title']}, B={spec['batch']}{desc}"]
    header = f"  {'wrt':<7} {'method':<25} {'first call':>11} {'steady':>11} {'x engine':>9} {'peak RSS':>9} {'+RSS':>8} {'max rel diff':>13}  note"
    lines.append(header)
    lines.append("  " + "-" * (len(header) + 8))
    for wrt in ("weights", "inputs"):
        engine = results.get(("engine", wrt))
        for method in METHODS:
            r = results.get((method, wrt))
            if r is None:
                continue
            label = LABELS[method]
            if r["status"] != "ok":
                lines.append(f"  {wrt:<7} {label:<25} {r.get('reason', r['status'])}")
                continue
            extrap = r.get("extrapolated", False)
            steady = ("~" if extrap else "") + fmt_time(r["steady"])
            ratio = "-"
            if engine and engine["status"] == "ok" and method != "engine":
                ratio = f"{r['steady'] / engine['steady']:,.1f}x"
            elif method == "engine":
                ratio = "1.0x"
            rel = "-"
            note = []
            if method != "engine" and engine and engine["status"] == "ok" and "values" in r:
                worst, where, zero_mismatch = compare(r["values"], engine["values"])
                rel = f"{worst:.1e}"
                if worst > REL_TOL_WARN or zero_mismatch:
                    note.append(f"MISMATCH at {where}; {zero_mismatch} dead-neuron disagreements")
                    alerts.append(
                        f"({name}) wrt={wrt}: {label} differs from the engine by {worst:.2e} "
                        f"relative at {where}"
                        + (" -- ABOVE 2e-3" if worst > REL_TOL_FAIL else "")
                    )
            if extrap:
                first = f"{fmt_time(r['first'])}+"
                note.append(
                    f"EXTRAPOLATED from {r['measured_calls']} measured calls "
                    f"({r['samples_measured']} of {spec['batch']} samples x all neurons, "
                    f"{r['per_call_ms']:.2f} ms/call) to {r['total_calls']:,}; "
                    f"first = tracing only; the same loop eager (no tf.function): "
                    f"~{fmt_time(r['eager_s'])} (extrap. from {r['eager_calls']} calls/layer)"
                )
            else:
                first = fmt_time(r["first"])
            if method == "jacobian":
                est = r["estimate_gib"]
                note.append(f"est. ~{est:.1f} GiB" if est >= 0.1 else f"est. ~{est * 1024:.0f} MiB")
            if r.get("pfor_while_loop"):
                note.append("pfor fell back to while_loop")
            if r.get("note"):
                note.append(r["note"])
            if method != "naive":
                note.append(f"{len(r['times'])} steady calls")
            lines.append(
                f"  {wrt:<7} {label:<25} {first:>11} {steady:>11} {ratio:>9} "
                f"{r['rss_peak_mib']:>5.0f} MiB {r['rss_peak_mib'] - r['rss_base_mib']:>4.0f} MiB {rel:>13}  "
                + "; ".join(note)
            )
    paired = results.get(("paired", "weights"))
    if paired and paired["status"] == "ok":
        lines.append(
            f"  engine / bare sweep, wrt weights, {paired['pairs']} calls of each alternated in one "
            f"process: median ratio {paired['ratio']:.2f}x (quartiles {paired['ratio_q1']:.2f}-"
            f"{paired['ratio_q3']:.2f}; medians {fmt_time(paired['engine'])} vs {fmt_time(paired['bare'])})"
        )
    elif paired:
        lines.append(f"  engine / bare sweep, alternated in one process: {paired.get('reason')}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 1 naive sample")
    parser.add_argument("--models", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--jacobian-limit-gib", type=float, default=None,
                        help="skip tape.jacobian when its estimated memory is above (default 8; 4 with --quick)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
    # Worker-side knobs (also settable from the driver).
    parser.add_argument("--min-repeats", type=int, default=None)
    parser.add_argument("--max-repeats", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="seconds of steady calls")
    parser.add_argument("--naive-samples", type=int, default=None,
                        help="samples (x all neurons) timed for the naive method")
    parser.add_argument("--naive-eager-calls", type=int, default=None,
                        help="eager naive calls timed per layer")
    parser.add_argument("--pairs", type=int, default=None,
                        help="interleaved engine/bare-sweep pairs timed in one process (MLPs)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--wrt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    defaults = {"min_repeats": (1, 3), "max_repeats": (5, 15), "budget": (3.0, 10.0), "naive_samples": (1, 2), "naive_eager_calls": (5, 30), "pairs": (11, 31),
                "jacobian_limit_gib": (4.0, 8.0)}
    for key, (quick, full) in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, quick if opts.quick else full)

    if opts.worker:
        worker(opts)
        return

    start = time.perf_counter()
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; expected a subset of {','.join(MODELS)}")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; expected a subset of {','.join(METHODS)}")
    if "engine" not in methods:
        methods.insert(0, "engine")

    print("compare_methods.py: exact per-neuron Jacobian norms, this engine vs the alternatives")
    for line in machine_info():
        print("  " + line)
    print(
        f"  mode: {'quick' if opts.quick else 'full'}; steady = median of {opts.min_repeats}-"
        f"{opts.max_repeats} calls after the first (stop once {opts.budget:.0f} s spent); "
        f"jacobian memory limit {opts.jacobian_limit_gib:g} GiB; float32; one subprocess per row"
    )
    print(
        "  columns: first call = fresh process incl. tracing; x engine = steady time / engine's "
        "(same wrt); peak RSS = the row's own process; +RSS = above the process after import, "
        "model build and one forward pass; max rel diff = max over samples and neurons of "
        "|v - engine| / |engine| (floor 1e-6 x layer max)"
    )
    print(flush=True)

    alerts, summary = [], []
    with tempfile.TemporaryDirectory(prefix="kns_bench_") as tmp:
        for name in models:
            results = {}
            for wrt in ("weights", "inputs"):
                for method in methods:
                    if method == "bare" and MODELS[name]["kind"] != "mlp":
                        continue
                    results[(method, wrt)] = run_worker(name, method, wrt, opts, tmp)
            if MODELS[name]["kind"] == "mlp" and "bare" in methods:
                results[("paired", "weights")] = run_worker(name, "paired", "weights", opts, tmp)
            print(model_table(name, results, alerts))
            for key, r in results.items():
                if r["status"] == "error" and r.get("stderr"):
                    print(f"  --- stderr of {key} (tail) ---")
                    print("  " + "\n  ".join(r["stderr"].strip().splitlines()[-15:]))
            print(flush=True)
            summary.append((name, results))

    # --- final summary table -------------------------------------------------
    print("Summary (steady state; ratio = method time / engine time, same wrt)")
    header = (
        f"  {'model':<24} {'engine w':>10} {'engine x':>10} {'bare w':>9} {'engine/bare':>11} "
        f"{'jacobian w':>12} {'naive w (extrap.)':>18} {'max rel diff':>13}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    target = None
    for name, results in summary:
        def get(method, wrt):
            r = results.get((method, wrt))
            return r if r and r["status"] == "ok" else None

        ew, ex, bw = get("engine", "weights"), get("engine", "inputs"), get("bare", "weights")
        jw, nw = get("jacobian", "weights"), get("naive", "weights")
        pw = get("paired", "weights")
        ratio = f"{ew['steady'] / bw['steady']:.2f}x" if ew and bw else "-"
        if pw:
            ratio = f"{pw['ratio']:.2f}x*"
        if name == "b" and (pw or (ew and bw)):
            target = pw["ratio"] if pw else ew["steady"] / bw["steady"]
        jac = (
            f"{fmt_time(jw['steady'])} ({jw['steady'] / ew['steady']:.0f}x)" if jw and ew
            else ("not run" if results.get(("jacobian", "weights"), {}).get("status") == "not_run" else "-")
        )
        naive = f"~{fmt_time(nw['steady'])} ({nw['steady'] / ew['steady']:,.0f}x)" if nw and ew else "-"
        worst = 0.0
        for (method, wrt), r in results.items():
            engine = get("engine", wrt)
            if method != "engine" and engine and r["status"] == "ok" and "values" in r:
                worst = max(worst, compare(r["values"], engine["values"])[0])
        print(
            f"  ({name}) {MODELS[name]['title'][:19]:<19} "
            f"{fmt_time(ew['steady']) if ew else 'error':>10} {fmt_time(ex['steady']) if ex else 'error':>10} "
            f"{fmt_time(bw['steady']) if bw else '-':>9} {ratio:>11} {jac:>12} {naive:>18} {worst:>13.1e}"
        )
    print(
        "  (w = wrt weights, x = wrt inputs; * = median ratio of engine/bare calls alternated in one "
        "process, steadier under load than the separate rows; max rel diff = worst over every "
        "baseline row of the model)"
    )
    if target is not None:
        verdict = "MET" if target <= 1.5 else "NOT MET"
        print(f"  target engine <= 1.5x bare sweep on model (b): {target:.2f}x -> {verdict}")
    if alerts:
        print("\nVALUE MISMATCHES (> 1e-3 relative):")
        for a in alerts:
            print("  " + a)
    else:
        print("  every baseline agrees with the engine to <= 1e-3 relative")
    print(f"\nTotal wall time: {time.perf_counter() - start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
