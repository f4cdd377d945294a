"""Where the exact sweep's time goes: per phase and per layer family, in training steps.

One TensorFlow child process per model and `wrt` (`benchmarks.models`:
MobileNetV2 alpha 0.35, EfficientNetB0 and ResNet50 at 32x32, weights=None,
10 classes, on a probe of 4; the README's CNN on 64), default layers,
`neuron_sensitivity(method="exact")` at the default memory budget:

  first   the first call: building the model's graph, planning the sweep,
          tracing, TensorFlow's graph optimization and one run
  steady  the median of `--repeats` later calls
  phases  one more call under TensorFlow's profiler: the sweep names every
          layer's ops `kns_forward/<LayerClass>`, `kns_gram/...` and
          `kns_reverse/<LayerClass>` (TensorBoard's profile shows the same
          names), so the op times are summed per phase and layer family and
          scaled to the steady call (ops of one call overlap on two cores:
          op time is shared out, not added up); `generic_per_row` marks the
          generic rule's per-row gradient loops
  peak RSS  the child's, model and TensorFlow included

Only the public call is timed; the profiler reads the op names the sweep
gives its ops anyway (no hook in the package: issue 22). Every time is a
multiple of one training step of the same model (batch 32, Adam, random
data; `_harness.classifier_step`, the median of the steps before and after).

Quick: MobileNetV2, EfficientNetB0 and the CNN, 2 repeats. Full: ResNet50
too (slow: an earlier run of the script measured about 1,550 training steps
a call to weights, and to inputs ran over 50 minutes).
"""

import collections
import glob
import os
import resource
import shutil
import statistics
import tempfile
import time

from benchmarks import _harness

MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet50", "readme_cnn")
QUICK_MODELS = ("mobilenet_v2", "efficientnet_b0", "readme_cnn")
LABELS = {"mobilenet_v2": "MobileNetV2 (alpha 0.35)", "efficientnet_b0": "EfficientNetB0",
          "resnet50": "ResNet50", "readme_cnn": "README's CNN"}
PHASES = {"kns_forward": "forward", "kns_gram": "gram", "kns_reverse": "reverse"}
WRTS = ("weights", "inputs")


def arguments(parser):
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--wrt", default=",".join(WRTS))
    parser.add_argument("--repeats", type=int, default=2, help="steady calls after the first")


def cases(args):
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
    return [{"backend": "tensorflow", "model": m, "wrt": w, "batch": 64 if m == "readme_cnn" else 4,
             "repeats": args.repeats} for m in models for w in args.wrt.split(",")]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def op_times(logdir):
    """`{op name: picoseconds}` summed over the executor threads of a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" in name and "::" not in name:  # "scope/op:OpType"; not executor events
                        totals[name.split(":")[0]] += event.duration_ps
    return totals


def family_of(op_name):
    """`(phase, family, per_row)` of an op named under the sweep's scopes."""
    parts = op_name.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in PHASES:
            family = parts[i + 1]
            if family.startswith("cut_"):
                family = "(rows stopping at cuts)"
            elif family == "products":
                family = "(Gram matrix products)"
            elif family == "inputs":
                family = "(norms at the inputs)"
            return PHASES[part], family, "generic_per_row" in parts
    return None, None, False


def measure(case, emit):
    import keras
    import tensorflow as tf

    from benchmarks import models
    from keras_neuron_sensitivity import neuron_sensitivity

    name, wrt = case["model"], case["wrt"]
    keras.utils.set_random_seed(0)
    build, from_logits = models.MODELS[name]
    model = build()
    x = models.probe(name, case["batch"])
    _harness.progress(f"{name} {wrt}: training step")
    result = {"step_before": _harness.classifier_step(model, from_logits, repeats=10),
              "rss_before_mib": peak_rss_mib()}
    emit(result)

    def call():
        return neuron_sensitivity(model, x, wrt=wrt, method="exact")

    _harness.progress(f"{name} {wrt}: first call")
    start = time.perf_counter()
    values = call()
    result["first"] = time.perf_counter() - start
    result["layers"] = len(values)
    result["neurons"] = int(sum(v.shape[0] for v in values.values()))
    emit(result)
    _harness.progress(f"{name} {wrt}: steady calls")
    result["steady"] = _harness.median_seconds(call, case["repeats"])
    emit(result)

    _harness.progress(f"{name} {wrt}: profiled call")
    logdir = tempfile.mkdtemp(prefix="kns_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        call()
        tf.profiler.experimental.stop()
        ops = op_times(logdir)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    scale = result["steady"] / (sum(ops.values()) or 1)  # seconds of the steady call per op picosecond
    families = collections.defaultdict(lambda: {"forward": 0.0, "gram": 0.0, "reverse": 0.0, "per_row": 0.0})
    other = 0.0
    for op, ps in ops.items():
        phase, family, per_row = family_of(op)
        if phase is None:
            other += ps * scale
            continue
        families[family][phase] += ps * scale
        if per_row:
            families[family]["per_row"] += ps * scale
    result.update(families=dict(families), other_ops=other, rss_peak_mib=peak_rss_mib())
    emit(result)
    _harness.progress(f"{name} {wrt}: training step again")
    result["step_after"] = _harness.classifier_step(model, from_logits, repeats=10)
    result["step"] = statistics.median([result["step_before"], result["step_after"]])
    return result


def _rss(mib):
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def table(record):
    lines = ["| model, probe, wrt | first call | steady call | steady: forward / Gram passes / reverse "
             "| heaviest families (steady) | peak RSS |",
             "|---|---|---|---|---|---|"]
    steps, per_row = [], 0.0
    for entry in record["cases"]:
        r, c = entry["result"] or {}, entry["case"]
        step = r.get("step") or r.get("step_before")
        label = f"{LABELS[c['model']]}, B={c['batch']}, {c['wrt']}"
        if "steady" not in r:
            done = f" (first call {_harness.steps(r['first'], step)})" if "first" in r else ""
            lines.append(f"| {label} | {entry['status']}{done} | | | | |")
            continue
        fams = r.get("families", {})
        total = {p: sum(f[p] for f in fams.values()) for p in ("forward", "gram", "reverse")}
        per_row += sum(f["per_row"] for f in fams.values())
        gram = _harness.steps(total["gram"], step) if total["gram"] else "no cut"
        spent = {f: v["forward"] + v["gram"] + v["reverse"] for f, v in fams.items()}
        heavy = sorted(((s, f) for f, s in spent.items() if s >= 0.1 * r["steady"]), reverse=True)[:3]
        heavy = ", ".join(f"{f} {100 * s / r['steady']:.0f} %" for s, f in heavy)
        phases = (f"{_harness.steps(total['forward'], step)} / {gram} / {_harness.steps(total['reverse'], step)}"
                  if fams else "-")
        lines.append(f"| {label} | {_harness.steps(r['first'], step)} | {_harness.steps(r['steady'], step)} "
                     f"| {phases} | {heavy or '-'} | {_rss(r['rss_peak_mib']) if 'rss_peak_mib' in r else '-'} |")
        if c["wrt"] == "weights" or not any(e["case"]["model"] == c["model"] and e["case"]["wrt"] == "weights"
                                           for e in record["cases"]):
            steps.append(f"{LABELS[c['model']]} {step * 1e3:.0f} ms")
    lines += ["", "In training steps of batch 32 of the same model, measured in the same process (one step: "
              + "; ".join(steps) + "). The first call includes building the graph, planning, tracing and "
              "TensorFlow's graph optimization. Phases and families from TensorFlow's profiler, scaled to the "
              "steady call. Time in the generic rule's per-row loops: "
              + ("none" if per_row == 0 else f"{per_row:.2f} s in all") + "."]
    return "\n".join(lines)
