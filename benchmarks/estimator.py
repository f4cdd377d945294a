"""method="estimate" against method="exact": its cost and its error (issue 10's target).

One TensorFlow child process per model and `wrt` (`benchmarks.models`;
MobileNetV2 alpha 0.35, 32x32, and, in the full run, the README's CNN),
probe of 32 uniform random samples (the estimator's error does not depend
on the data being natural), every default layer, the default 32 probes:

  estimate  `neuron_sensitivity(method="estimate")`: the first call (tracing
            included, seed 0) and the median of `--repeats` later calls,
            each with its own seed
  exact     `neuron_sensitivity(method="exact")` on every default layer when
            its predicted time is at most 2/3 of `--exact-limit` seconds
            (one call; a second, the steady one, when the first took under a
            third of the limit); else "not run" with the prediction: the
            cost model's exact / estimate ratio times the estimate's
            measured time
  error     the relative error |estimate - exact| / exact of the per-neuron
            mean (reduction "mean") over the neurons with exact > 0, median
            and 95th percentile per seed, on three layers: early (the widest
            default layer in the first fifth), middle (the widest in the
            middle third), both among those whose predicted exact cost to
            weights is at most 5 times the last layer's, and the last; exact
            on each layer alone when it did not run on every layer. Also
            whether the estimator's zeros are exact's for every seed, and
            the median of |estimate - exact| / std_error (about 0.67 when the
            reported standard error is right)

The private part, kept small: `cost.predict_costs` (through
`_computation.prepare`) predicts exact's time and picks the layers, as
auto's prediction does; no public call returns it.

Times are multiples of one training step of the same model (batch 32, Adam,
random data; `_harness.classifier_step`, the median of the steps before and
after). Target (issue 10), on MobileNetV2: each `wrt` at most 60 steps, and
on the early, middle and last layers a median error at most 10 % and a 95th
percentile at most 35 %.

Quick: MobileNetV2, 3 later calls. Full: the README's CNN too, 5.
"""

import statistics
import time

from benchmarks import _harness

MODELS = ("readme_cnn", "mobilenet_v2")
LABELS = {"readme_cnn": "README's CNN", "mobilenet_v2": "MobileNetV2 (alpha 0.35, 32x32)"}
PROBE, NUM_PROBES = 32, 32
WRTS = ("weights", "inputs")
ROLES = ("early", "middle", "last")
TARGET = {"model": "mobilenet_v2", "steps": 60.0, "median": 0.10, "p95": 0.35}


def arguments(parser):
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)} "
                        "(default: quick mobilenet_v2, full both)")
    parser.add_argument("--repeats", type=int, default=None, help="later estimate calls (default 5, quick 3)")
    parser.add_argument("--exact-limit", type=float, default=180.0,
                        help="seconds exact on every default layer may be predicted to take (2/3 of it)")


def cases(args):
    models = args.models.split(",") if args.models else (["mobilenet_v2"] if args.quick else list(MODELS))
    repeats = args.repeats or (3 if args.quick else 5)
    return [{"backend": "tensorflow", "model": m, "wrt": w, "repeats": repeats, "exact_limit": args.exact_limit}
            for m in models for w in WRTS]


def pick_roles(keys, widths, costs):
    """`{role: key}`: first, early, middle and last (see the module
    docstring; the first layer is for benchmarks/studies/estimator_tangents.py);
    `costs` are each layer's predicted exact cost to weights."""
    n = len(keys)
    bound = 5 * costs[keys[-1]]

    def widest(lo, hi):
        window = [i for i in range(lo, hi) if costs[keys[i]] <= bound] or [lo]
        return keys[max(window, key=lambda i: (widths[i], -i))]

    return {"first": keys[0], "early": widest(1, max(2, n // 5)), "middle": widest(n // 3, max(n // 3 + 1, 2 * n // 3)),
            "last": keys[-1]}


def layer_costs(problem, wrt, keys):
    """`{key: predicted exact cost}` of each layer on its own."""
    from keras_neuron_sensitivity.engine import cost

    return {k: cost.predict_costs(problem.graph, [k], wrt, problem.inputs, NUM_PROBES)["exact"] for k in keys}


def errors(values, std_errors, exact):
    """The error statistics of one layer: per seed, and over seeds."""
    import numpy as np

    exact = np.asarray(exact, np.float64)
    live = exact > 0
    out = {"neurons": int(exact.size), "dead": int((~live).sum()), "median": [], "p95": [],
           "dead_equal": True}
    ratios = []
    for value, se in zip(values, std_errors):
        value, se = np.asarray(value, np.float64), np.asarray(se, np.float64)
        out["dead_equal"] &= bool(np.array_equal(value == 0, exact == 0))
        if live.any():
            rel = np.abs(value[live] - exact[live]) / exact[live]
            out["median"].append(float(np.median(rel)))
            out["p95"].append(float(np.percentile(rel, 95)))
        ok = se > 0
        ratios.append(np.abs(value - exact)[ok] / se[ok])
    pooled = np.concatenate(ratios) if ratios else np.zeros(0)
    out["err_over_se"] = float(np.median(pooled)) if pooled.size else None
    return out


def measure(case, emit):
    import keras

    from benchmarks import models
    from keras_neuron_sensitivity import _computation, neuron_sensitivity
    from keras_neuron_sensitivity.engine import cost

    name, wrt = case["model"], case["wrt"]
    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[name]
    model = build()
    x = models.probe(name, PROBE)
    _harness.progress(f"{name} {wrt}: training step")
    result = {"step_before": _harness.classifier_step(model, from_logits)}
    emit(result)

    _harness.progress(f"{name} {wrt}: estimate")
    values, std_errors, times = [], [], []
    for seed in range(case["repeats"] + 1):
        start = time.perf_counter()
        s = neuron_sensitivity(model, x, wrt=wrt, method="estimate", num_probes=NUM_PROBES, seed=seed)
        times.append(time.perf_counter() - start)
        values.append(s)
        std_errors.append(s.std_error)
    keys = list(values[0])
    result.update(first=times[0], steady=statistics.median(times[1:]), seeds=len(values),
                  layers=len(keys), neurons=int(sum(values[0][k].shape[0] for k in keys)))
    emit(result)

    # The private part: predicted costs, for exact's time and the layers.
    _harness.progress(f"{name} {wrt}: predicted costs")
    problem = _computation.prepare(model, x, wrt=(wrt,), layers=None)
    costs = cost.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, NUM_PROBES)
    roles = pick_roles(keys, [int(values[0][k].shape[0]) for k in keys], layer_costs(problem, "weights", keys))
    roles = result["roles"] = {role: roles[role] for role in ROLES}
    result["exact_predicted"] = costs["exact"] / costs["estimate"] * result["steady"]
    emit(result)

    exact = {}
    if result["exact_predicted"] <= case["exact_limit"] * 2 / 3:
        _harness.progress(f"{name} {wrt}: exact, every default layer")
        start = time.perf_counter()
        exact = neuron_sensitivity(model, x, wrt=wrt, method="exact")
        result["exact_first"] = time.perf_counter() - start
        emit(result)
        if result["exact_first"] < case["exact_limit"] / 3:
            start = time.perf_counter()
            neuron_sensitivity(model, x, wrt=wrt, method="exact")
            result["exact_steady"] = time.perf_counter() - start
    result["errors"] = {}
    for role, key in roles.items():
        if key not in exact:
            _harness.progress(f"{name} {wrt}: exact on {key} alone")
            start = time.perf_counter()
            exact[key] = neuron_sensitivity(model, x, wrt=wrt, method="exact", layers=[key])[key]
            result.setdefault("exact_alone", {})[key] = time.perf_counter() - start
        result["errors"][role] = {"key": key, **errors([v[key] for v in values],
                                                        [e[key] for e in std_errors], exact[key])}
        emit(result)
    _harness.progress(f"{name} {wrt}: training step again")
    result["step_after"] = _harness.classifier_step(model, from_logits)
    result["step"] = statistics.median([result["step_before"], result["step_after"]])
    return result


def _percent(v):
    return f"{100 * v:.1f}" if v < 0.1 else f"{100 * v:.0f}"


def _error_cell(e):
    if not e or not e["median"]:
        return "-"
    return f"{_percent(statistics.median(e['median']))} / {_percent(statistics.median(e['p95']))} %"


def table(record):
    lines = ["| model, probe of 32 | wrt | estimate: later calls (first, tracing) | exact, every default layer "
             "| error of the per-neuron mean, median / 95th percentile: early, middle, last layer "
             "| estimator's zeros are exact's | median \\|err\\| / std_error |",
             "|---|---|---|---|---|---|---|"]
    notes, verdicts, last_model = [], [], None
    for entry in record["cases"]:
        r, c = entry["result"] or {}, entry["case"]
        step = r.get("step") or r.get("step_before")
        label = "" if c["model"] == last_model else f"{LABELS[c['model']]}"
        last_model = c["model"]
        if "steady" not in r:
            lines.append(f"| {label} | {c['wrt']} | {entry['status']} | | | | |")
            continue
        estimate = f"{_harness.steps(r['steady'], step)} steps ({_harness.steps(r['first'], step)})"
        if "exact_steady" in r:
            exact = f"{_harness.steps(r['exact_steady'], step)} steps ({_harness.steps(r['exact_first'], step)})"
        elif "exact_first" in r:
            exact = f"{_harness.steps(r['exact_first'], step)} steps (one call, tracing included)"
        else:
            exact = (f"not run: predicted ~{r['exact_predicted']:,.0f} s = "
                     f"{_harness.steps(r['exact_predicted'], step)} steps")
            if entry["status"] != "ok":
                exact += f" ({entry['status']})"
        errs = r.get("errors", {})
        cells = ", ".join(_error_cell(errs.get(role)) for role in ROLES)
        dead = "-" if not errs else ("yes" if all(e["dead_equal"] for e in errs.values()) else "no")
        ratios = [e["err_over_se"] for e in errs.values() if e["err_over_se"] is not None]
        ratio = f"{min(ratios):.2f} to {max(ratios):.2f}" if ratios else "-"
        lines.append(f"| {label} | {c['wrt']} | {estimate} | {exact} | {cells} | {dead} | {ratio} |")
        if c["wrt"] == "weights" and r.get("roles"):
            notes.append(f"{LABELS[c['model']]}: {r['layers']} default layers, {r['neurons']:,} neurons; "
                         + ", ".join(f"{role} `{r['roles'][role]}` ({errs[role]['neurons'] if role in errs else '?'})"
                                     for role in ROLES if role in r["roles"])
                         + f"; one training step {step * 1e3:.0f} ms")
        if c["model"] == TARGET["model"]:
            ok = step and r["steady"] / step <= TARGET["steps"] and len(errs) == len(ROLES) and all(
                statistics.median(e["median"]) <= TARGET["median"] and statistics.median(e["p95"]) <= TARGET["p95"]
                for e in errs.values())
            verdicts.append(f"{c['wrt']} {'met' if ok else 'missed'}")
    seeds = record["cases"][0]["result"].get("seeds") if record["cases"] and record["cases"][0]["result"] else None
    lines += ["", f"Times in training steps of batch 32 of the same model; errors: per seed, the median / 95th "
              f"percentile over the layer's neurons with exact > 0, then the median over {seeds} seeds; "
              "|err| / std_error: the median over neurons and seeds, per layer (range over the three layers; "
              "about 0.67 when the standard error is right). Layers: " + "; ".join(notes) + ". "
              f"Target (issue 10) on MobileNetV2, at most {TARGET['steps']:g} steps and errors at most "
              f"{100 * TARGET['median']:g} / {100 * TARGET['p95']:g} %: " + (", ".join(verdicts) or "not run") + "."]
    return "\n".join(lines)
