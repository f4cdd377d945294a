"""method="estimate" against method="exact", and what method="auto" picks.

For each model (the MLPs a, b and the CNN c of compare_methods.py, and three
keras.applications models at 32x32, weights=None, 10 classes), probe of 32
samples of uniform random data in [0, 1) (no data set can be downloaded; the
estimator's error does not depend on the data being natural), default layers,
each wrt on its own:

  estimate  neuron_sensitivity(method="estimate") at the default num_probes:
            the first call (tracing) and the median of later calls, each with
            a different seed
  exact     neuron_sensitivity(method="exact") on every default layer when
            the cost model (cost.predict_costs, scaled by the estimator's
            measured seconds per unit) predicts at most 2/3 of --exact-limit
            seconds, stopped at the limit; otherwise "not run", with the
            layers and neurons it would need and the predicted time
  auto      the method method="auto" picks, with cost.predict_costs
  error     the estimator's relative error |estimate - exact| / exact of the
            per-neuron mean value (reduction="mean") over neurons with
            exact > 0: median and 95th percentile per layer, for every seed
            the estimate was called with (the median over seeds is shown, and
            the range), on every default layer of the small models and, on
            the applications, on four layers where exact finishes: the first
            default layer, an early one (the widest in the first fifth), a
            middle one (the widest in the middle third) and the last, early
            and middle among those whose predicted exact cost is at most 5
            times the last layer's; whether the estimator's dead neurons
            equal exact's exactly; and how the reported std_error compares
            with the actual error

Every time is also a multiple of one training step of batch 32 (Adam,
sparse categorical cross-entropy, random labels) of the same model, measured
in the same process after a warm-up; the weights are restored after it, so
every method sees the same model. Each model runs in two subprocesses (this
script re-invoked with --worker): one for the estimate (both wrt), one for
the exact runs (restarted after a run stopped at the time limit), so that
each method's peak RSS is its own.

The issue's target (issue 10) is checked at the end: MobileNetV2, probe of
32, estimate at the default num_probes: each wrt at most 60 training steps
(after a warm-up call), median error at most 10 % and 95th percentile at most
35 % on the early, middle and last layers.

    .venv/bin/python benchmarks/estimator.py             # about 19 min on 2 cores at load 5-7
    .venv/bin/python benchmarks/estimator.py --quick     # MobileNetV2 and the CNN only, fewer repeats
    .venv/bin/python benchmarks/estimator.py --models mobilenet --exact-limit 600

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
import threading
import time

from _machine import loadavg, machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "RESULT_JSON "
LAYER_TAG = "LAYER_JSON "
START_TAG = "EXACT_START "
PROBE = 32
SMALL = {"a": "MLP 64-256-128-64-10", "b": "MLP 784-512-256-128-10", "c": "CNN (compare_methods.py c)"}
APPLICATIONS = {
    "mobilenet": ("MobileNetV2", {"alpha": 0.35}, "MobileNetV2 alpha=0.35, 32x32x3"),
    "efficientnet": ("EfficientNetB0", {}, "EfficientNetB0, 32x32x3"),
    "resnet": ("ResNet50", {}, "ResNet50, 32x32x3"),
}
TITLES = {**SMALL, **{k: v[2] for k, v in APPLICATIONS.items()}}
TARGET = {"steps": 60.0, "median": 0.10, "p95": 0.35, "model": "mobilenet"}


# =============================================================================
# Worker
# =============================================================================


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build(name):
    """`(model, x, from_logits)`: the model, a probe of 32 uniform samples."""
    import keras
    import numpy as np

    if name in SMALL:
        from compare_methods import build_model

        model, x, _ = build_model(name)
        return model, x[:PROBE], True
    cls, kwargs, _ = APPLICATIONS[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, cls)(
        input_shape=(32, 32, 3), weights=None, classes=10, **kwargs
    )
    x = np.random.RandomState(1).uniform(0.0, 1.0, (PROBE, 32, 32, 3)).astype("float32")
    return model, x, False


def train_step_seconds(model, x, from_logits):
    """Seconds per training step of batch 32, after a warm-up; weights restored.

    `model.fit` on random data and labels (Adam); one warm-up fit traces the
    step, then the median of three timed fits, each of enough steps to last
    about a second (at least 5).
    """
    import keras
    import numpy as np

    saved = model.get_weights()
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    rng = np.random.RandomState(7)
    classes = int(model.outputs[0].shape[-1])

    def fit(steps):
        xs = rng.uniform(0.0, 1.0, (32 * steps, *x.shape[1:])).astype("float32")
        ys = rng.randint(0, classes, 32 * steps)
        start = time.perf_counter()
        model.fit(xs, ys, batch_size=32, epochs=1, verbose=0, shuffle=False)
        return time.perf_counter() - start

    fit(3)  # warm-up: traces the train step
    steps = 5
    first = fit(steps)
    if first < 1.0:
        steps = min(500, int(steps * 1.0 / max(first, 1e-3)) + 1)
    per_step = statistics.median(fit(steps) / steps for _ in range(3))
    model.set_weights(saved)
    return per_step, steps


def problem_of(model, x, wrt, layers=None):
    from keras_neuron_sensitivity import _computation

    return _computation.prepare(model, x, wrt=(wrt,), layers=layers)


def widths_of(problem):
    from keras_neuron_sensitivity.engine.replay import Replay

    replay = Replay(problem.graph, problem.keys)
    values = replay.run([t[:1] for t in problem.inputs])
    return [int(v.shape[-1]) for v in replay.target_outputs(values)]


def layer_costs(problem, wrt, num_probes, keys=None):
    """`{key: predicted exact cost}`, each layer (default: every default layer) on its own."""
    from keras_neuron_sensitivity.engine import cost

    return {
        key: cost.predict_costs(problem.graph, [key], wrt, problem.inputs, num_probes)["exact"]
        for key in (problem.keys if keys is None else keys)
    }


def pick_roles(info):
    """`{role: key}` on an application: first, early, middle, last.

    early: the widest default layer in the first fifth (after the first);
    middle: the widest in the middle third; both among the layers whose
    predicted exact cost (to weights) is at most 5 times the last layer's,
    so that exact finishes there in about a minute.
    """
    keys, widths, costs = info["keys"], info["widths"], info["layer_costs"]
    n = len(keys)
    bound = 5 * costs[keys[-1]]

    def widest(lo, hi):
        window = [i for i in range(lo, hi) if costs[keys[i]] <= bound] or [lo]
        return keys[max(window, key=lambda i: (widths[i], -i))]

    return {
        "first": keys[0],
        "early": widest(1, max(2, n // 5)),
        "middle": widest(n // 3, max(n // 3 + 1, 2 * n // 3)),
        "last": keys[-1],
    }


def worker_estimate(opts):
    """Per wrt: estimate timing and values, auto's choice, predicted costs."""
    import numpy as np

    from keras_neuron_sensitivity import _computation, neuron_sensitivity
    from keras_neuron_sensitivity.engine import cost, methods

    model, x, from_logits = build(opts.model)
    step, step_count = train_step_seconds(model, x, from_logits)
    result = {
        "status": "ok", "step": step, "step_count": step_count,
        "params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "rss_base_mib": peak_rss_mib(), "per_wrt": {},
    }
    arrays = {}
    num_probes = methods.DEFAULT_NUM_PROBES
    for wrt in ("weights", "inputs"):
        problem = problem_of(model, x, wrt)
        costs = cost.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, num_probes)
        auto = _computation.choose(problem, wrt, "auto", num_probes)
        seeds, times, values, errors = [], [], [], []

        def call(seed):
            start = time.perf_counter()
            s = neuron_sensitivity(model, x, wrt=wrt, method="estimate", seed=seed)
            seconds = time.perf_counter() - start
            if s.method != "estimate" or s.num_probes != num_probes:
                raise RuntimeError(f"asked for the estimate, got {s.method!r} with {s.num_probes} probes")
            seeds.append(seed)
            values.append(s)
            errors.append(s.std_error)
            return seconds

        first = call(0)
        while len(times) < opts.max_repeats and (len(times) < opts.min_repeats or sum(times) < opts.budget):
            times.append(call(len(seeds)))
        for key in problem.keys:
            arrays[f"{wrt}/value/{key}"] = np.stack([v[key] for v in values])
            arrays[f"{wrt}/error/{key}"] = np.stack([e[key] for e in errors])
        info = {
            "first": first, "steady": statistics.median(times), "times": times, "seeds": seeds,
            "num_probes": num_probes, "costs": costs, "auto": auto,
            "keys": list(problem.keys), "widths": widths_of(problem),
            "rss_peak_mib": peak_rss_mib(),
        }
        result["per_wrt"][wrt] = info
        # Per-layer costs: to weights on every layer (they pick the layers
        # compared with exact on an application), to inputs on those only.
        if opts.model in APPLICATIONS and wrt == "weights":
            info["layer_costs"] = layer_costs(problem, wrt, num_probes)
            result["roles"] = pick_roles(info)
        elif opts.model in APPLICATIONS:
            info["layer_costs"] = layer_costs(problem, wrt, num_probes, set(result["roles"].values()))
        else:
            info["layer_costs"] = layer_costs(problem, wrt, num_probes)
    np.savez(opts.out, **arrays)
    result["values_file"] = opts.out
    return result


def worker_exact(opts):
    """Exact runs, one per job `wrt:all` (every default layer) or `wrt:key`.

    Prints `EXACT_START` before each timed call so that the driver can stop
    it at the time limit, and one `LAYER_JSON` line per finished job; a job
    on every default layer is repeated (median of later calls) when fast.
    """
    import numpy as np

    from keras_neuron_sensitivity import neuron_sensitivity

    model, x, from_logits = build(opts.model)
    step, step_count = train_step_seconds(model, x, from_logits)
    common = {"step": step, "step_count": step_count, "rss_base_mib": peak_rss_mib()}
    for index, job in enumerate(json.loads(opts.layers)):
        wrt, key = job
        layers = None if key is None else [key]
        print(START_TAG + json.dumps(job), flush=True)
        start = time.perf_counter()
        s = neuron_sensitivity(model, x, wrt=wrt, method="exact", layers=layers)
        first = time.perf_counter() - start
        times = []
        if key is None and first <= opts.budget / 2:
            while len(times) < opts.max_repeats and (len(times) < opts.min_repeats or sum(times) < opts.budget):
                start = time.perf_counter()
                neuron_sensitivity(model, x, wrt=wrt, method="exact", layers=layers)
                times.append(time.perf_counter() - start)
        path = f"{opts.out}.{index}.npz"
        np.savez(path, **{"value/" + k: v for k, v in s.items()})
        print(LAYER_TAG + json.dumps({
            "job": job, "first": first, "steady": statistics.median(times) if times else None,
            "times": times, "values_file": path, "rss_peak_mib": peak_rss_mib(), **common,
        }), flush=True)
    return {"status": "ok", **common, "rss_peak_mib": peak_rss_mib()}


def worker(opts):
    run = worker_estimate if opts.method == "estimate" else worker_exact
    result = run(opts)
    print(RESULT_TAG + json.dumps(result), flush=True)


# =============================================================================
# Driver
# =============================================================================


def run_worker(opts, tmp, model, method, jobs=None, limit=None):
    """Runs one worker; returns `(result or None, [job results], note)`.

    With `limit`, a timed exact call that runs longer than `limit` seconds
    is stopped (the worker killed); the jobs finished before are kept, and
    `note` says which job was stopped.
    """
    out = os.path.join(tmp, f"{model}_{method}_{len(os.listdir(tmp))}.npz")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        "--model", model, "--method", method, "--out", out,
        "--layers", json.dumps(jobs or []),
        "--min-repeats", str(opts.min_repeats), "--max-repeats", str(opts.max_repeats),
        "--budget", str(opts.budget),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    label = f"  [{model}] {method:<8}" + (f" {len(jobs)} job(s): {jobs}" if jobs else "")
    print(label + " ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE)
    lines, err = [], []
    state = {"started": None, "job": None}

    def read_out():
        for line in proc.stdout:
            if line.startswith(START_TAG):
                state["started"] = time.perf_counter()
                state["job"] = json.loads(line[len(START_TAG):])
            lines.append(line)

    def read_err():
        for line in proc.stderr:
            err.append(line)
            del err[:-200]

    threads = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    note, stopped = "", None
    while proc.poll() is None:
        time.sleep(0.5)
        now = time.perf_counter()
        if limit is not None and state["started"] is not None and now - state["started"] > limit:
            proc.kill()
            stopped = state["job"]
            note = f"over {limit:.0f} s"
        elif now - start > opts.timeout:
            proc.kill()
            stopped = state["job"]
            note = f"worker stopped after {opts.timeout:.0f} s"
        if stopped is not None:
            break
    proc.wait()
    for t in threads:
        t.join(timeout=5)
    print(f" {time.perf_counter() - start:.0f} s" + (f" ({note})" if note else ""), file=sys.stderr, flush=True)
    result, done = None, []
    for line in lines:
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        elif line.startswith(LAYER_TAG):
            done.append(json.loads(line[len(LAYER_TAG):]))
    if result is None and not note:
        tail = [l for l in err if l.strip()][-15:]
        note = f"failed (exit {proc.returncode})" + (": " + tail[-1].strip()[:200] if tail else "")
        if tail:
            print("    " + "    ".join(tail), file=sys.stderr)
    return result, done, note, stopped


def run_exact(opts, tmp, model, jobs):
    """`{(wrt, key): job result or {"note": ...}}`: every job, restarting the
    worker after a job stopped at the time limit."""
    results = {}
    while jobs:
        _, done, note, stopped = run_worker(opts, tmp, model, "exact", jobs, limit=opts.exact_limit)
        for r in done:
            r["values"] = load_values(r["values_file"])
            results[tuple(r["job"])] = r
        remaining = [j for j in jobs if tuple(j) not in results]
        if stopped is not None and stopped in remaining:
            results[tuple(stopped)] = {"note": note}
            remaining.remove(stopped)
        elif remaining:  # a failure before any job started, or after
            for j in remaining:
                results[tuple(j)] = {"note": note or "no result"}
            remaining = []
        jobs = remaining
    return results


def load_values(path, prefix="value/"):
    import numpy as np

    with np.load(path) as data:
        return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def errors_of(estimates, exact):
    """Per seed: median and p95 of |est - exact| / exact over exact > 0.

    `estimates`: (seeds, C); `exact`: (C,). Also whether every seed's exact
    zeros are exact's, the number of dead neurons and of live ones.
    """
    import numpy as np

    exact = np.asarray(exact, np.float64)
    live = exact > 0
    medians, p95s, dead_equal = [], [], True
    for est in np.asarray(estimates, np.float64):
        dead_equal &= bool(np.array_equal(est == 0, exact == 0))
        if live.any():
            rel = np.abs(est[live] - exact[live]) / exact[live]
            medians.append(float(np.median(rel)))
            p95s.append(float(np.percentile(rel, 95)))
    return medians, p95s, dead_equal, int((~live).sum()), int(live.sum())


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.1f} s"


def fmt_steps(seconds, step):
    if seconds is None or not step:
        return "-"
    return f"{seconds / step:,.1f}"


def pct(v):
    return f"{100 * v:.1f} %"


def run_model(opts, tmp, name):
    """Runs every worker of one model; returns what `print_model` needs."""
    est, _, note, _ = run_worker(opts, tmp, name, "estimate")
    if est is None:
        return {"estimate": None, "note": note}
    arrays = load_values(est["values_file"], prefix="")
    roles = est.get("roles", {})
    jobs, model = [], {"estimate": est, "roles": roles, "per_wrt": {}}
    for wrt, info in est["per_wrt"].items():
        info["values"] = {k: arrays[f"{wrt}/value/{k}"] for k in info["keys"]}
        info["std_errors"] = {k: arrays[f"{wrt}/error/{k}"] for k in info["keys"]}
        # Seconds per cost unit: the estimator's measured time over its
        # predicted cost; exact's predicted seconds are its cost times this.
        info["per_unit"] = info["steady"] / info["costs"]["estimate"]
        info["exact_predicted"] = info["costs"]["exact"] * info["per_unit"]
        wanted = list(dict.fromkeys(roles.values())) if roles else info["keys"]
        info["wanted"] = wanted
        # Two thirds: the prediction ran 20-40 % under the measured time on
        # MobileNetV2; a run stopped at the limit is time lost.
        if info["exact_predicted"] <= opts.exact_limit * 2 / 3:
            jobs.append([wrt, None])
        if roles:
            jobs.extend([wrt, k] for k in wanted)
    exact = run_exact(opts, tmp, name, jobs) if jobs else {}
    for wrt, info in est["per_wrt"].items():
        whole = exact.get((wrt, None))
        info["exact_all"] = whole if whole and "values" in whole else None
        if not whole:
            predicted, limit = info["exact_predicted"], opts.exact_limit
            info["exact_all_note"] = (
                f"over {limit:.0f} s: predicted ~{predicted:,.0f} s" if predicted > limit
                else f"predicted ~{predicted:,.0f} s, over 2/3 of the {limit:.0f} s limit"
            )
        elif "values" not in whole:
            info["exact_all_note"] = whole["note"]
        info["exact_values"], info["exact_runs"] = {}, {}
        for key in info["wanted"]:
            run = exact.get((wrt, key))
            if run and "values" in run:
                info["exact_values"][key] = run["values"][key]
                info["exact_runs"][key] = run
            elif info["exact_all"]:
                info["exact_values"][key] = info["exact_all"]["values"][key]
            else:
                info["exact_runs"][key] = run or {"note": "not run"}
    return model


def pooled_row(wrt, label, info, keys, exact_values):
    """One row: the error over the neurons of `keys` together, per seed."""
    import numpy as np

    stacked = np.concatenate([np.asarray(info["values"][k], np.float64) for k in keys], axis=1)
    exact = np.concatenate([np.asarray(exact_values[k], np.float64) for k in keys])
    medians, p95s, dead_equal, dead, live = errors_of(stacked, exact)
    print(
        f"    {wrt:<7} {label:<33} {exact.size:>5} {dead:>4} "
        f"{pct(statistics.median(medians)) + f' [{100 * min(medians):.1f}-{100 * max(medians):.1f}]':>19} "
        f"{pct(statistics.median(p95s)) + f' [{100 * min(p95s):.1f}-{100 * max(p95s):.1f}]':>20} "
        f"{'yes' if dead_equal else 'NO':>10}"
    )


def print_model(name, model, opts, checks, autos):
    import numpy as np

    est = model["estimate"]
    if est is None:
        print(f"Model ({name}) {TITLES[name]}: estimate worker failed: {model['note']}\n")
        if name == TARGET["model"]:
            checks.append(("estimate worker", None, model["note"]))
        return
    w = est["per_wrt"]["weights"]
    print(
        f"Model ({name}) {TITLES[name]}, probe {PROBE}: {len(w['keys'])} default layers, "
        f"{sum(w['widths']):,} neurons, {est['params']:,} trainable params; one training step of batch 32: "
        f"{fmt_time(est['step'])} (estimate's process)"
    )
    head = (
        f"  {'wrt':<7} {'estimate 1st':>12} {'(steps)':>8} {'estimate':>9} {'(steps)':>8}  "
        f"{'exact 1st':>10} {'exact':>9} {'(steps)':>8}  {'auto':<8} {'pred. exact':>11} {'pred. est.':>10} "
        f"{'pred. ratio':>11} {'measured':>9}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for wrt, info in est["per_wrt"].items():
        ex = info["exact_all"]
        if ex:
            steady = ex["steady"] if ex["steady"] is not None else ex["first"]
            ex_cols = f"{fmt_time(ex['first']):>10} {fmt_time(steady):>9} {fmt_steps(steady, ex['step']):>8}"
            measured = f"{steady / info['steady']:.2f}x"
        else:
            ex_cols = f"{'not run':>10} {'':>9} {'':>8}"
            measured = "-"
        costs = info["costs"]
        print(
            f"  {wrt:<7} {fmt_time(info['first']):>12} {fmt_steps(info['first'], est['step']):>8} "
            f"{fmt_time(info['steady']):>9} {fmt_steps(info['steady'], est['step']):>8}  {ex_cols}  "
            f"{info['auto']:<8} {costs['exact']:>11.3g} {costs['estimate']:>10.3g} "
            f"{costs['exact'] / costs['estimate']:>10.1f}x {measured:>9}"
        )
        if not ex:
            print(
                f"          exact on the default layers: not run ({info['exact_all_note']}); it would need "
                f"all {len(info['keys'])} default layers, {sum(info['widths']):,} neurons"
            )
        elif ex["steady"] is None:
            print("          exact: one call only (the first took over half the repeat budget)")
    rss = f"estimate {est['per_wrt']['inputs']['rss_peak_mib']:.0f} MiB"
    exact_rss = [r["rss_peak_mib"] for i in est["per_wrt"].values() for r in [i["exact_all"]] if r]
    exact_rss += [r["rss_peak_mib"] for i in est["per_wrt"].values() for r in i["exact_runs"].values() if "rss_peak_mib" in r]
    if exact_rss:
        rss += f", exact {max(exact_rss):.0f} MiB"
    print(
        f"  (estimate = median of {len(w['times'])} later calls, each with its own seed; exact = median of later "
        "calls, or the first if slow; (steps) = time / one training step of batch 32 in the same process; "
        "pred. = cost.predict_costs on the default layers (auto picks exact when pred. ratio <= 2); "
        f"measured = exact / estimate, measured; peak RSS of the processes: {rss})"
    )

    print("  error of the per-neuron mean value, |estimate - exact| / exact over neurons with exact > 0 "
          "(median over seeds [range over seeds])")
    head = (
        f"    {'wrt':<7} {'layer':<26} {'role':<6} {'C':>5} {'dead':>4} {'median err':>19} "
        f"{'95th pct err':>20} {'dead equal':>10} {'|err|/se':>8}  {'exact, 1 call (steps)':>21} {'pred.':>8}"
    )
    print(head)
    print("    " + "-" * (len(head) - 4))
    role_of = {v: k for k, v in model["roles"].items()}
    for wrt, info in est["per_wrt"].items():
        for key in info["wanted"]:
            role = role_of.get(key, "")
            target_row = role in ("early", "middle", "last") and name == TARGET["model"]
            exact = info["exact_values"].get(key)
            run = info["exact_runs"].get(key, {})
            if exact is None:
                print(f"    {wrt:<7} {key[:26]:<26} {role:<6} exact not run ({run.get('note', '?')})")
                if target_row:
                    checks.append((f"{wrt}: {role} layer {key}: error", None, "exact not run"))
                continue
            values = np.asarray(info["values"][key], np.float64)
            se = np.asarray(info["std_errors"][key], np.float64)
            medians, p95s, dead_equal, dead, live = errors_of(values, exact)
            ok = se > 0
            ratio = float(np.median(np.abs(values - exact[None])[ok] / se[ok])) if ok.any() else float("nan")
            if "first" in run:
                predicted = info["layer_costs"][key] * info["per_unit"]
                tcol = f"{fmt_time(run['first'])} ({fmt_steps(run['first'], run['step'])})"
                pcol = fmt_time(predicted)
            else:
                tcol, pcol = "(run on all layers)", ""
            if medians:
                med, p95 = statistics.median(medians), statistics.median(p95s)
                medc = f"{pct(med)} [{100 * min(medians):.1f}-{100 * max(medians):.1f}]"
                p95c = f"{pct(p95)} [{100 * min(p95s):.1f}-{100 * max(p95s):.1f}]"
            else:
                med = p95 = None
                medc = p95c = "- (all dead)"
            print(
                f"    {wrt:<7} {key[:26]:<26} {role:<6} {exact.shape[0]:>5} {dead:>4} {medc:>19} {p95c:>20} "
                f"{'yes' if dead_equal else 'NO':>10} {ratio:>8.2f}  {tcol:>21} {pcol:>8}"
            )
            if target_row and med is not None:
                checks.append((
                    f"{wrt}: {role} layer {key} ({exact.shape[0]} neurons): median error {100 * med:.2f} % (<= 10 %), "
                    f"95th percentile {100 * p95:.2f} % (<= 35 %), dead neurons equal: {'yes' if dead_equal else 'NO'}",
                    med <= TARGET["median"] and p95 <= TARGET["p95"] and dead_equal,
                    f"{sum(m <= TARGET['median'] for m in medians)}/{len(medians)} seeds meet the median, "
                    f"{sum(p <= TARGET['p95'] for p in p95s)}/{len(p95s)} the 95th percentile",
                ))
        compared = [k for k in info["wanted"] if k in info["exact_values"]]
        if len(compared) > 1:
            pooled_row(wrt, "these layers pooled", info, compared, info["exact_values"])
        if model["roles"] and info["exact_all"]:
            pooled_row(wrt, f"all {len(info['keys'])} layers pooled", info, info["keys"], info["exact_all"]["values"])
        ex = info["exact_all"]
        if ex:
            measured = (ex["steady"] if ex["steady"] is not None else ex["first"]) / info["steady"]
            right = "exact" if measured <= 2.0 else "estimate"
            autos.append(
                f"({name}) {wrt}: auto picks {info['auto']} (predicted exact/estimate "
                f"{info['costs']['exact'] / info['costs']['estimate']:.1f}x), measured {measured:.2f}x -> "
                + ("agrees" if right == info["auto"] else f"DISAGREES: by the measured times, {right}")
            )
        if name == TARGET["model"]:
            steps = info["steady"] / est["step"]
            checks.insert(0, (
                f"{wrt}: estimate {fmt_time(info['steady'])} = {steps:.1f} training steps (<= 60; step "
                f"{fmt_time(est['step'])}; median of {len(info['times'])} calls after the first, which took "
                f"{fmt_steps(info['first'], est['step'])} steps with tracing)",
                steps <= TARGET["steps"], "",
            ))
    print(
        "    (per seed, the median / 95th percentile over the layer's neurons with exact > 0; then the median "
        "over seeds, the range in brackets; dead equal: the estimator's exact zeros are exact's for every "
        "seed; |err|/se: median over neurons and seeds of |estimate - exact| / reported std_error, about "
        "0.67 when the standard error is right; exact, 1 call: its first call, tracing included; pred.: "
        "predict_costs for that layer alone, in seconds at the estimator's measured seconds per unit)"
    )
    print(flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="MobileNetV2 and the CNN only, fewer repeats (about 6 min)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {','.join(TITLES)} (default all; --quick: c,mobilenet)")
    parser.add_argument("--exact-limit", type=float, default=180.0,
                        help="seconds one exact call may take before it is stopped (default 180)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker, all included")
    parser.add_argument("--min-repeats", type=int, default=None)
    parser.add_argument("--max-repeats", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="seconds of later calls")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--wrt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--layers", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    defaults = {"min_repeats": (2, 2), "max_repeats": (3, 8), "budget": (5.0, 20.0)}
    for key, (quick, full) in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, quick if opts.quick else full)

    if opts.worker:
        worker(opts)
        return

    start = time.perf_counter()
    models = opts.models or ("c,mobilenet" if opts.quick else ",".join(TITLES))
    models = [m.strip() for m in models.split(",") if m.strip()]
    for m in models:
        if m not in TITLES:
            parser.error(f"unknown model {m!r}; expected a subset of {','.join(TITLES)}")
    print("estimator.py: method='estimate' vs 'exact', and method='auto'")
    for line in machine_info():
        print("  " + line)
    print(
        f"  mode: {'quick' if opts.quick else 'full'}; probe {PROBE} samples of uniform random data in [0, 1); "
        f"default layers; estimate at the default num_probes, later calls {opts.min_repeats}-{opts.max_repeats} "
        f"(stop once {opts.budget:.0f} s spent); exact limit {opts.exact_limit:.0f} s per call; float32; per model one "
        "subprocess for the estimate and one for exact"
    )
    print(flush=True)

    checks, autos = [], []
    with tempfile.TemporaryDirectory(prefix="kns_estimator_") as tmp:
        for name in models:
            print_model(name, run_model(opts, tmp, name), opts, checks, autos)

    if autos:
        print("method='auto' against the measured times, where exact ran on every default layer (the rule:")
        print("exact when it takes at most 2x the estimate; the measured ratio is steady exact / steady estimate)")
        for line in autos:
            print("  " + line)
        print()
    if TARGET["model"] in models:
        print("Target (issue 10): MobileNetV2, probe 32, estimate at the default num_probes")
        for text, ok, detail in checks:
            verdict = "FAIL (not measured)" if ok is None else ("PASS" if ok else "FAIL")
            print(f"  {verdict}  {text}" + (f"  ({detail})" if detail else ""))
        print("  (error verdicts use the median over seeds of each seed's median / 95th percentile)")
    print(f"\nTotal wall time: {time.perf_counter() - start:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
