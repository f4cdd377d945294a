"""Exact per-neuron Jacobian norms: this engine against the other ways to get them.

Three models of `benchmarks.models` (the MLP 64-256-128-64-10 on a probe of
32, the MLP 784-512-256-128-10 on 64, the README's CNN on 64; uniform random
probes), every layer with weights, both `wrt`, float32. One TensorFlow child
process per model, method and `wrt`, so that each peak RSS is the method's
own:

  engine    `neuron_sensitivity(model, x, wrt=..., reduction=None)`
  bare      a hand-written chain-of-matmuls reverse sweep of a Dense-ReLU
            stack in one tf.function (the MLPs): the floor the engine is
            held to
  paired    the engine and the bare sweep called alternately in one process
            (the MLPs, to weights): the median of the per-pair ratios, steadier
            under load than two processes' times
  jacobian  `tf.GradientTape.jacobian` (pfor) of every layer's neuron values
            with respect to all trainable weights, or `batch_jacobian` to the
            inputs, in a tf.function; not run when its estimated memory is
            over `--jacobian-limit-gib`
  naive     one `tape.gradient` per neuron and sample, each call compiled;
            the first samples measured, extrapolated to the probe; the same
            loop eager, extrapolated from a few calls per layer

Each time is the first call (tracing included) and the median of later
calls, a multiple of one training step of the same model measured in the
same process after the method (batch 32, Adam, random data;
`_harness.classifier_step`). Every baseline's values are compared with the
engine's, computed in the same child after the method's peak RSS is read:
the largest |v - engine| / |engine| over samples and neurons (floor 1e-6 of
the layer's largest), and the neurons zero in one and not the other. Target:
the engine at most 1.5x the bare sweep on the 784 MLP, to weights (paired).

Quick: 1 to 5 later calls (3 s), 1 naive sample, 5 eager calls per layer,
11 pairs, jacobian up to 4 GiB. Full: 3 to 15 (10 s), 2, 30, 31, 8 GiB.
"""

import resource
import statistics
import time

from benchmarks import _harness

MODELS = ("mlp256", "mlp784", "readme_cnn")
LABELS = {"mlp256": "MLP 64-256-128-64-10", "mlp784": "MLP 784-512-256-128-10",
          "readme_cnn": "README's CNN (Conv32-Conv64-pool-Dense128-Dense10, 28x28x1)"}
BATCH = {"mlp256": 32, "mlp784": 64, "readme_cnn": 64}
MLPS = ("mlp256", "mlp784")
METHODS = ("engine", "bare", "jacobian", "naive")
WRTS = ("weights", "inputs")
SETTINGS = {  # name: (quick, full)
    "min_repeats": (1, 3), "max_repeats": (5, 15), "budget": (3.0, 10.0), "naive_samples": (1, 2),
    "naive_eager_calls": (5, 30), "pairs": (11, 31), "jacobian_limit_gib": (4.0, 8.0),
}
TARGET = 1.5


def arguments(parser):
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (the engine always)")
    for name in SETTINGS:
        parser.add_argument("--" + name.replace("_", "-"), type=float if "budget" in name or "gib" in name else int,
                            default=None, help="default %s (quick %s)" % SETTINGS[name][::-1])


def cases(args):
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v[0 if args.quick else 1]
                for k, v in SETTINGS.items()}
    methods = ["engine"] + [m for m in args.methods.split(",") if m != "engine"]
    out = []
    for model in args.models.split(","):
        for wrt in WRTS:
            for method in methods:
                if method != "bare" or model in MLPS:
                    out.append({"backend": "tensorflow", "model": model, "method": method, "wrt": wrt, **settings})
        if model in MLPS and "bare" in methods:
            out.append({"backend": "tensorflow", "model": model, "method": "paired", "wrt": "weights", **settings})
    return out


# ---------------------------------------------------------------------------
# The methods: each `(model, x, selected, case)` -> (result, values or None)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def neuron_values(y):
    """(B, ..., C) -> (B, C): the mean over every axis but batch and channel."""
    import tensorflow as tf

    axes = list(range(1, y.shape.rank - 1))
    return tf.reduce_mean(y, axis=axes) if axes else y


def time_calls(fn, case, max_repeats=None):
    """`(first, steady, out)`: the first call, then the median of later ones."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    while len(times) < (max_repeats or case["max_repeats"]) and (
            len(times) < case["min_repeats"] or sum(times) < case["budget"]):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def run_engine(model, x, selected, case):
    from keras_neuron_sensitivity import neuron_sensitivity

    first, steady, out = time_calls(lambda: neuron_sensitivity(model, x, wrt=case["wrt"], reduction=None), case)
    result = {"first": first, "steady": steady}
    if sorted(out) != sorted(layer.name for layer in selected):
        result["note"] = f"layer keys {sorted(out)}"
    return result, dict(out)


def make_bare(model, x, wrt):
    """A chain-of-matmuls reverse sweep of a Dense(-ReLU) stack, or None.

    For each target layer t: cotangents (K, B, C) start from the diagonal
    d_k e_k (d = relu'(z_t)), go back with G_h = G_z @ W^T, G_z = G_h * relu'(z),
    and every layer adds ||h_in||^2 ||G_z||^2 + ||G_z||^2 (kernel + bias); to
    the inputs, one more hop G_x = G_z @ W_1^T and its squared norm.
    """
    import tensorflow as tf

    dense = [layer for layer in model.layers if layer.trainable_weights]
    if any(type(layer).__name__ != "Dense" for layer in dense):
        return None, dense
    kernels = [layer.kernel.value for layer in dense]
    biases = [layer.bias.value for layer in dense]
    relu = [layer.activation.__name__ == "relu" for layer in dense]

    @tf.function(autograph=False)
    def sweep(x):
        hs, masks = [x], []
        for i in range(len(dense)):
            z = tf.matmul(hs[-1], kernels[i]) + biases[i]
            mask = tf.cast(z > 0, z.dtype) if relu[i] else tf.ones_like(z)
            hs.append(z * mask if relu[i] else z)
            masks.append(mask)
        h_sq = [tf.reduce_sum(tf.square(h), axis=1) + 1.0 for h in hs]  # ||h||^2 + 1 (bias)
        results = []
        for t in range(len(dense)):
            d = tf.transpose(masks[t])  # (K, B): the diagonal of G_z at the seed
            sq = h_sq[t][None, :] * tf.square(d) if wrt == "weights" else None
            if t == 0 and wrt == "inputs":
                sq = tf.reduce_sum(tf.square(d[:, :, None] * tf.transpose(kernels[0])[:, None, :]), axis=-1)
            elif t > 0:
                g_h = d[:, :, None] * tf.transpose(kernels[t])[:, None, :]  # G_h[k, n, :] = d[k, n] W_t[:, k]
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
    return (lambda: [r.numpy() for r in sweep(xt)]), dense


def run_bare(model, x, selected, case):
    call, dense = make_bare(model, x, case["wrt"])
    first, steady, out = time_calls(call, case)
    return {"first": first, "steady": steady}, {layer.name: v for layer, v in zip(dense, out)}


def run_paired(model, x, selected, case):
    from keras_neuron_sensitivity import neuron_sensitivity

    bare, _ = make_bare(model, x, case["wrt"])

    def engine():
        return neuron_sensitivity(model, x, wrt=case["wrt"], reduction=None)

    for _ in range(3):  # tracing and warm-up, both
        engine()
        bare()
    engines, bares = [], []
    for _ in range(case["pairs"]):
        engines.append(_harness.median_seconds(engine, 1))
        bares.append(_harness.median_seconds(bare, 1))
    ratios = [e / b for e, b in zip(engines, bares)]
    q = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
            "engine": statistics.median(engines), "bare": statistics.median(bares)}, None


def jacobian_bytes(model, x, selected, wrt):
    """The bytes pfor is expected to need.

    Per selected layer l, the Jacobian block (B, C_l, *W.shape) of every
    weight upstream of l, or (B, C_l, *input_shape) to the inputs, plus one
    cotangent per neuron of every upstream activation (B, C_l, *shape);
    twice their sum (the peak RSS measured was 1.6-2x the sum).
    """
    import numpy as np

    widths = [int(layer.output.shape[-1]) for layer in selected]
    inputs = int(np.prod(x.shape[1:]))
    upstream_params, upstream_acts, params, acts = [], [], 0, inputs
    for layer in model.layers:
        params += sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
        acts += int(np.prod(layer.output.shape[1:]))
        if layer in selected:
            upstream_params.append(params)
            upstream_acts.append(acts)
    blocks = upstream_params if wrt == "weights" else [inputs] * len(widths)
    return 2 * 4 * x.shape[0] * sum(c * (p + a) for c, p, a in zip(widths, blocks, upstream_acts))


def run_jacobian(model, x, selected, case):
    import keras
    import tensorflow as tf

    wrt = case["wrt"]
    needs = jacobian_bytes(model, x, selected, wrt) / 2**30
    if needs > case["jacobian_limit_gib"]:
        return {"not_run": f"needs ~{needs:,.0f} GiB", "estimate_gib": needs}, None
    probe = keras.Model(model.inputs, [layer.output for layer in selected])
    weights = [v.value for v in model.trainable_weights]

    @tf.function
    def jac(x):
        norms = []
        with tf.GradientTape(persistent=True) as tape:
            if wrt == "inputs":
                tape.watch(x)
            outs = probe(x, training=False)
            values = [neuron_values(y) for y in (outs if isinstance(outs, (list, tuple)) else [outs])]
        for a in values:
            blocks = tape.jacobian(a, weights) if wrt == "weights" else [tape.batch_jacobian(a, x)]
            norms.append(tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(j), axis=list(range(2, j.shape.rank)))
                                            for j in blocks if j is not None])))
        return norms

    xt = tf.constant(x)
    first, steady, out = time_calls(lambda: [r.numpy() for r in jac(xt)], case, max_repeats=5)
    return {"first": first, "steady": steady, "estimate_gib": needs}, {l.name: v for l, v in zip(selected, out)}


def run_naive(model, x, selected, case):
    """One compiled gradient per (neuron, sample): the first samples, extrapolated."""
    import keras
    import tensorflow as tf

    wrt = case["wrt"]
    weights = [v.value for v in model.trainable_weights]
    functions = []
    for layer in selected:
        sub = keras.Model(model.inputs, layer.output)

        def grad_norm(x1, k, sub=sub):
            with tf.GradientTape() as tape:
                if wrt == "inputs":
                    tape.watch(x1)
                a = neuron_values(sub(x1, training=False))[0, k]
            grads = tape.gradient(a, [x1] if wrt == "inputs" else weights)
            return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads if g is not None]))

        functions.append((grad_norm, tf.function(grad_norm)))
    samples = [tf.constant(x[n: n + 1]) for n in range(x.shape[0])]
    widths = [int(layer.output.shape[-1]) for layer in selected]
    ks = [tf.constant(k, tf.int32) for k in range(max(widths))]
    # Eager, as a user's loop would run it: a few calls per layer, extrapolated.
    eager = 0.0
    for (fn, _), c in zip(functions, widths):
        n = min(c, case["naive_eager_calls"])
        fn(samples[0], ks[0])  # the layer's first eager call: not timed
        start = time.perf_counter()
        for k in range(n):
            fn(samples[0], ks[k]).numpy()
        eager += (time.perf_counter() - start) / n * c * x.shape[0]
    start = time.perf_counter()
    for _, fn in functions:  # tracing: one per layer
        fn(samples[0], ks[0]).numpy()
    tracing = time.perf_counter() - start
    n_samples = min(case["naive_samples"], x.shape[0])
    rows = {layer.name: [] for layer in selected}
    start = time.perf_counter()
    for n in range(n_samples):
        for layer, (_, fn), c in zip(selected, functions, widths):
            rows[layer.name].append([fn(samples[n], ks[k]) for k in range(c)])
    measured = time.perf_counter() - start
    values = {name: tf.stack([tf.stack(r) for r in per]).numpy() for name, per in rows.items()}
    return {"first": tracing, "steady": measured * x.shape[0] / n_samples, "extrapolated": True,
            "samples_measured": n_samples, "calls_measured": n_samples * sum(widths),
            "calls": x.shape[0] * sum(widths), "eager": eager}, values


RUNNERS = {"engine": run_engine, "bare": run_bare, "paired": run_paired, "jacobian": run_jacobian,
           "naive": run_naive}


def compare(values, reference):
    """`(largest relative difference, neurons zero in one only)` over the
    samples `values` has."""
    import numpy as np

    worst, zeros = 0.0, 0
    for key, ref in reference.items():
        v = np.asarray(values[key], np.float64)
        r = np.asarray(ref, np.float64)[: v.shape[0]]
        floor = max(1e-6 * float(np.abs(r).max()), 1e-30)
        worst = max(worst, float(np.max(np.abs(v - r) / np.maximum(np.abs(r), floor))))
        zeros += int(np.sum((v == 0) != (r == 0)))
    return worst, zeros


def measure(case, emit):
    import keras
    import numpy as np

    from benchmarks import models
    from keras_neuron_sensitivity import neuron_sensitivity

    name, method = case["model"], case["method"]
    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[name]
    model = build()
    x = models.probe(name, BATCH[name])
    model(x, training=False)  # every kernel used once
    selected = [layer for layer in model.layers if layer.trainable_weights]
    result = {"rss_base_mib": peak_rss_mib(),
              "params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
              "widths": {layer.name: int(layer.output.shape[-1]) for layer in selected}}
    _harness.progress(f"{name} {method} {case['wrt']}")
    out, values = RUNNERS[method](model, x, selected, case)
    result.update(out, rss_peak_mib=peak_rss_mib())
    emit(result)
    if values is not None and method != "engine":
        _harness.progress(f"{name} {method} {case['wrt']}: the engine's values")
        reference = neuron_sensitivity(model, x, wrt=case["wrt"], reduction=None)
        result["max_rel_diff"], result["zero_mismatch"] = compare(values, reference)
        emit(result)
    _harness.progress(f"{name} {method} {case['wrt']}: training step")
    result["step"] = _harness.classifier_step(model, from_logits, repeats=10)
    return result


# ---------------------------------------------------------------------------
# The table


def _rss(mib):
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def table(record):
    runs = {(e["case"]["model"], e["case"]["method"], e["case"]["wrt"]): e for e in record["cases"]}
    models = [m for m in MODELS if any(k[0] == m for k in runs)]
    lines = ["| model, probe | wrt | this engine | bare Dense-ReLU sweep | `tape.jacobian` (pfor) "
             "| one gradient per neuron and sample (extrapolated): compiled, eager | peak RSS (engine) "
             "| largest relative difference from the engine |",
             "|---|---|---|---|---|---|---|---|"]
    steps, diffs, target = [], [], None

    def get(model, method, wrt):
        entry = runs.get((model, method, wrt))
        if entry is None:
            return None, "-"
        r = entry["result"] or {}
        if "not_run" in r:
            return None, f"not run: {r['not_run']}"
        if "steady" not in r and "ratio" not in r:
            return None, entry["status"]
        return r, None

    for model in models:
        label = f"{LABELS[model]}, {BATCH[model]}"
        for wrt in WRTS:
            engine, why = get(model, "engine", wrt)
            cells = [why or f"{_harness.steps(engine['steady'], engine['step'])} steps "
                            f"({_harness.steps(engine['first'], engine['step'])} first)"]
            bare, why = get(model, "bare", wrt)
            cell = why if model in MLPS else "-"
            if bare:
                cell = f"{_harness.steps(bare['steady'], bare['step'])} steps"
                paired, _ = get(model, "paired", wrt)
                if paired:
                    cell += f"; the engine {paired['ratio']:.2f}x it, paired"
                    if model == "mlp784":
                        target = paired["ratio"]
            cells.append(cell)
            for method in ("jacobian", "naive"):
                r, why = get(model, method, wrt)
                if r is None:
                    cells.append(why)
                    continue
                cell = f"{_harness.steps(r['steady'], r['step'])} steps"
                if method == "naive":
                    cell = f"~{cell}, ~{_harness.steps(r['eager'], r['step'])} eager"
                if engine:
                    ratio = r["steady"] / engine["steady"]
                    cell += f" ({ratio:.1f}x the engine)" if ratio < 10 else f" ({ratio:,.0f}x the engine)"
                cells.append(cell)
            cells.append(_rss(engine["rss_peak_mib"]) if engine else "-")
            worst = [(runs[(model, m, wrt)]["result"] or {}).get("max_rel_diff") for m in METHODS[1:]
                     if (model, m, wrt) in runs]
            worst = [w for w in worst if w is not None]
            zeros = sum((runs[(model, m, wrt)]["result"] or {}).get("zero_mismatch", 0) for m in METHODS[1:]
                        if (model, m, wrt) in runs)
            diffs += worst
            cells.append(f"{max(worst):.1e}" + (f", {zeros} zeros differ" if zeros else "") if worst else "-")
            lines.append(f"| {label} | {wrt} | " + " | ".join(cells) + " |")
            label = ""
        if engine:
            steps.append(f"{LABELS[model].split(' (')[0]} {engine['step'] * 1e3:.1f} ms")
    case = record["cases"][0]["case"] if record["cases"] else {}
    verdict = "not run" if target is None else f"{target:.2f}x, {'met' if target <= TARGET else 'missed'}"
    lines += ["", "Steady calls in training steps of batch 32 of the same model, measured in the same process "
              f"(one step: {'; '.join(steps)}); the engine's first call, tracing included, in brackets; later "
              f"calls: {case.get('min_repeats')} to {case.get('max_repeats')}. The naive loop measured on "
              f"{case.get('naive_samples')} sample(s), extrapolated to the probe. Target: the engine at most "
              f"{TARGET:g}x the bare sweep on the 784 MLP to weights, the median of {case.get('pairs')} pairs "
              f"alternated in one process: {verdict}. Largest difference of any baseline from the engine: "
              + (f"{max(diffs):.1e}" if diffs else "-") + "."]
    return "\n".join(lines)
