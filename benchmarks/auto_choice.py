"""What method="auto" picks, against the measured times of exact and the estimator.

One TensorFlow child process per model (`benchmarks.models`): the digits
MLP on a probe of 128 of the digits, the 784 MLP on 32, the small CNN with
global average pooling on 64 and MobileNetV2 (alpha 0.35, 32x32) on 4
(uniform random probes). For each `wrt`, every default layer,
`num_probes=32`, seed 0:

  exact, estimate  the steady time of `neuron_sensitivity(method=...)`,
                   median of `--repeats` calls after a warm-up call
  predicted        `cost.predict_costs`'s exact / estimate ratio: the
                   number auto compares with `cost.EXACT_PREFERENCE` (2);
                   the package's private cost model, read here because no
                   public call returns it
  auto             `neuron_sensitivity(method="auto").method`

Each time is a multiple of one training step of the same model (batch 32,
Adam, random data; `_harness.classifier_step`, the median of the steps
before and after the calls). By the measured times auto is right where it
picks exact exactly when exact measures at most 2 times the estimate.

Quick: 3 repeats. Full: 5 repeats.
"""

import statistics

from benchmarks import _harness

MODELS = ("digits_mlp", "mlp784", "gap_cnn", "mobilenet_v2")
LABELS = {
    "digits_mlp": "MLP 64-128-64-10 (the demo's)",
    "mlp784": "MLP 784-512-256-128-10",
    "gap_cnn": "CNN Conv16-pool-Conv32-GAP-Dense10, 28x28x1",
    "mobilenet_v2": "MobileNetV2 (alpha 0.35, 32x32)",
}
PROBE = {"digits_mlp": 128, "mlp784": 32, "gap_cnn": 64, "mobilenet_v2": 4}
WRTS = ("weights", "inputs")
PREFERENCE = 2.0  # cost.EXACT_PREFERENCE, stored with each result too


def arguments(parser):
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=None, help="steady calls (default 5, quick 3)")


def cases(args):
    repeats = args.repeats or (3 if args.quick else 5)
    return [{"backend": "tensorflow", "model": m, "repeats": repeats} for m in args.models.split(",")]


def measure(case, emit):
    import keras

    from benchmarks import models
    from keras_neuron_sensitivity import _computation, neuron_sensitivity
    from keras_neuron_sensitivity.engine import cost

    name = case["model"]
    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[name]
    model = build()
    x = models.probe(name, PROBE[name])
    _harness.progress(f"{name}: training step")
    result = {"probe": PROBE[name], "preference": cost.EXACT_PREFERENCE, "per_wrt": {},
              "step_before": _harness.classifier_step(model, from_logits)}
    for wrt in WRTS:
        row = result["per_wrt"][wrt] = {}
        for method in ("exact", "estimate"):
            _harness.progress(f"{name}: {wrt} {method}")
            row[method] = _harness.median_seconds(
                lambda method=method: neuron_sensitivity(model, x, wrt=wrt, method=method,
                                                         num_probes=32, seed=0),
                case["repeats"], warmup=1)
        # The private part: the prediction auto compares (no public call returns it).
        problem = _computation.prepare(model, x, wrt=(wrt,), layers=None)
        row["predicted"] = cost.predict_costs(problem.graph, problem.keys, wrt, problem.inputs, 32)
        row["auto"] = neuron_sensitivity(model, x, wrt=wrt, method="auto", num_probes=32,
                                        seed=0).method
        emit(result)
    _harness.progress(f"{name}: training step again")
    result["step_after"] = _harness.classifier_step(model, from_logits)
    result["step"] = statistics.median([result["step_before"], result["step_after"]])
    return result


def table(record):
    lines = ["| model, probe | wrt | exact | estimate | exact / estimate, measured | predicted | auto "
             "| auto's pick by the measured times |",
             "|---|---|---|---|---|---|---|---|"]
    steps, wrong = [], 0
    for entry in record["cases"]:
        r, name = entry["result"] or {}, entry["case"]["model"]
        step = r.get("step") or r.get("step_before")
        label = f"{LABELS[name]}, {PROBE[name]}"
        if not r.get("per_wrt"):
            lines.append(f"| {label} | | {entry['status']} | | | | | |")
            continue
        for wrt in WRTS:
            row = r["per_wrt"].get(wrt)
            if row is None:
                lines.append(f"| {label} | {wrt} | {entry['status']} | | | | | |")
                label = ""
                continue
            ratio = row["exact"] / row["estimate"]
            predicted = row["predicted"]["exact"] / row["predicted"]["estimate"]
            should = "exact" if ratio <= r.get("preference", PREFERENCE) else "estimate"
            right = "right" if row["auto"] == should else f"wrong: {should} by the times"
            wrong += row["auto"] != should
            lines.append(f"| {label} | {wrt} | {_harness.steps(row['exact'], step)} "
                         f"| {_harness.steps(row['estimate'], step)} | {ratio:.2f} | {predicted:.2f} "
                         f"| {row['auto']} | {right} |")
            label = ""
        if step:
            steps.append(f"{LABELS[name]} {step * 1e3:.1f} ms")
    repeats = record["cases"][0]["case"]["repeats"] if record["cases"] else "-"
    lines += ["", f"Steady calls (median of {repeats} after a warm-up call), every default layer, "
              "`num_probes=32`, in training steps of the same model; auto picks exact when the predicted "
              f"ratio is at most {PREFERENCE:g}. Wrong picks by the measured times: {wrong}. "
              "One training step (batch 32): " + "; ".join(steps) + "."]
    return "\n".join(lines)
