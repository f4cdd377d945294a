"""The callback's cost at its defaults on a Gemma-shaped decoder, in training steps (issue 19 item 5).

`models.gemma`: keras_hub `Gemma3CausalLM` with random weights, no
preprocessor, 8 blocks, hidden 256, intermediate 1024, 4 query heads of 64
(1 key/value head), vocabulary 1,024, sequence 128, probe of 8. At the
callback's defaults: every default site (inside every block: norms,
projections, the feed-forward units, the heads), both `wrt`,
`method="auto"`, computed as the callback computes one logged epoch
(`_computation.prepare` then `_computation.compute`, the same calls).

  step    one training step (`train_on_batch`, batch 32, sequence 128), median
          of 10 after 3 warm-up steps: the project's unit (every figure in
          docs/benchmarks.md is in training steps of batch 32)
  step_probe  the same at batch 8, the probe's size: the costs are also
          given in these steps, four times as many
  first   the first logged epoch: preparing the graph and sites, auto's
          prediction, tracing, the computation
  later   the median of 3 later logged epochs

Targets: at most 600 training steps for the first logged epoch and 60 for
each later one. Quick: 2 blocks. Full: 8 blocks (about 10 minutes).
"""

import statistics
import time

from benchmarks import _harness

SEQUENCE, PROBE, TRAINING_BATCH, VOCAB = 128, 8, 32, 1024
TARGETS = {"first": 600, "later": 60}


def arguments(parser):
    parser.add_argument("--blocks", type=int, default=None, help="default 8 (quick 2)")
    parser.add_argument("--backends", default="tensorflow")


def cases(args):
    blocks = args.blocks or (2 if args.quick else 8)
    return [{"backend": b, "blocks": blocks} for b in args.backends.split(",")]


def measure(case, emit):
    import keras
    import numpy as np

    from benchmarks import models
    from keras_neuron_sensitivity import _computation

    keras.utils.set_random_seed(0)
    model = models.gemma(blocks=case["blocks"], vocabulary=VOCAB)
    model.compile(optimizer="adam")
    result = {}
    for name, size in (("step", TRAINING_BATCH), ("step_probe", PROBE)):
        batch = models.tokens(size, SEQUENCE, VOCAB, seed=1)
        targets = np.roll(batch["token_ids"], -1, axis=1)
        _harness.progress(f"training step, batch {size}")
        result[name] = _harness.training_step(model, batch, targets, repeats=10)
    emit(result)
    probe = models.tokens(PROBE, SEQUENCE, VOCAB, seed=2)
    settings = dict(method="auto", num_probes=None, seed=0, memory_budget_mb=1024)
    _harness.progress("first logged epoch")
    start = time.perf_counter()
    problem = _computation.prepare(model, probe, wrt=None, layers=None, what="probe_data")
    results = _computation.compute(problem, **settings)
    result["first"] = time.perf_counter() - start
    result["sites"] = len(problem.keys)
    result["inside_blocks"] = sum(k.count("/") >= 2 for k in problem.keys)
    result["neurons"] = int(sum(v.shape[-1] for v in results["weights"].reduce("mean").values()))
    result["methods"] = {w: r.method.name for w, r in results.items()}
    emit(result)
    later = []
    for i in range(3):
        _harness.progress(f"later logged epoch {i + 1}")
        start = time.perf_counter()
        _computation.compute(problem, **settings)
        later.append(time.perf_counter() - start)
    result["later"] = statistics.median(later)
    return result


def table(record):
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    lines = ["| backend | blocks | sites (inside blocks), neurons | auto chose | training step, batch 32 (8) | "
             f"first logged epoch (target ≤ {TARGETS['first']} steps) | "
             f"later logged epoch (target ≤ {TARGETS['later']} steps) |",
             "|---|---|---|---|---|---|---|"]
    for entry in record["cases"]:
        r, c = entry["result"] or {}, entry["case"]
        cells = []
        for key in ("first", "later"):
            if r.get(key) is None:
                cells.append(entry["status"])
                continue
            n = r[key] / r["step"]
            small = f" ({r[key] / r['step_probe']:,.0f} of batch 8)" if r.get("step_probe") else ""
            cells.append(f"{_harness.duration(r[key])} = {n:,.0f} steps{small} "
                         f"({'met' if n <= TARGETS[key] else 'missed'})")
        chose = ", ".join(f"{w}: {m.lower()}" for w, m in sorted(r.get("methods", {}).items()))
        sites = f"{r['sites']} ({r['inside_blocks']}), {r['neurons']:,}" if "sites" in r else "-"
        lines.append(f"| {names[c['backend']]} | {c['blocks']} | {sites} | {chose or '-'} | "
                     f"{_harness.duration(r.get('step'))} ({_harness.duration(r.get('step_probe'))}) | "
                     f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def summary(record):
    """The README's sentence: the first case's costs, in training steps of batch 32."""
    r, c = record["cases"][0]["result"], record["cases"][0]["case"]
    return (f"On a Gemma-shaped keras_hub decoder ({c['blocks']} blocks, hidden 256, sequence {SEQUENCE}, "
            f"probe of {PROBE}: {r['neurons']:,} neurons at {r['sites']} sites, {r['inside_blocks']} of them "
            f"inside the blocks) the callback at its defaults costs {r['first'] / r['step']:,.0f} training "
            f"steps (batch {TRAINING_BATCH}) for the first logged epoch and {r['later'] / r['step']:,.0f} for "
            "each later one.")


VIEWS = {"summary": summary}
