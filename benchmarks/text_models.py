"""Tiny language models, with attention's rules and without, in training steps.

Three models on token ids (`benchmarks.models`, random weights): keras_hub's
`BertBackbone` and `GPT2Backbone` and a Keras Transformer classifier
(`Embedding`, two `MultiHeadAttention` blocks with their feed-forward
`Dense`s), 2 blocks, hidden 32, 2 heads, vocabulary 100, sequence 8, probe
of 8 (half of it padded at the end). For each, `neuron_sensitivity(model,
probe)` to the weights and to the inputs (the embedded input, for token
ids), on two selections of sites: the default layers (the sites inside the
transformer blocks and attention layers included), and the model's
top-level layers with weights (`layers=`: the blocks and attention layers
as single sites, the package's default before it opened them):

  first   the first call (tracing included)
  steady  the median of `--repeats` later calls
  step    one training step of the same model (`train_on_batch`, batch 32,
          Adam, integer labels; a `Dense(2)` head on the keras_hub
          backbones), median of 30 after 3 warm-up steps, in the same process

Rules: "closed form" is the package as it is; "generic" registers the
generic rule (`GenericRule`: one weight gradient per neuron and sample, in a
loop) for every layer that attention's and the token embeddings' rules
serve, as the package computed them before they had rules of their own.
Each (model, rules) pair runs in its own child process (the registration
is process-wide).

Quick: 3 later calls. Full: 5. Every model and both rules either way
(about 5 minutes on 2 loaded cores).
"""

import time
import traceback

from benchmarks import _harness

MODELS = ("bert", "gpt2", "transformer_classifier")
LABELS = {"bert": "BERT (keras_hub `BertBackbone`)", "gpt2": "GPT-2 (keras_hub `GPT2Backbone`)",
          "transformer_classifier": "Transformer classifier (Keras layers)"}
RULES = ("closed", "generic")
# The rules that attention and the token embeddings gained; "generic" replaces them.
TEXT_RULES = ("MultiHeadAttentionRule", "CachedMultiHeadAttentionRule", "TransformerEncoderRule",
              "TransformerDecoderRule", "ReversibleEmbeddingRule", "PositionEmbeddingRule",
              "TokenAndPositionEmbeddingRule")
BLOCKS, HIDDEN, HEADS, VOCAB, LENGTH, PROBE, TRAIN_BATCH = 2, 32, 2, 100, 8, 8, 32
WRTS = ("weights", "inputs")
SITES = {"default": "default (inside the blocks too)", "top": "top-level layers with weights"}


def arguments(parser):
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rules", default=",".join(RULES), help="closed, generic or both")
    parser.add_argument("--repeats", type=int, default=None, help="later calls (default 5, quick 3)")


def cases(args):
    repeats = args.repeats or (3 if args.quick else 5)
    return [{"backend": "tensorflow", "model": m, "rules": r, "repeats": repeats}
            for m in args.models.split(",") for r in args.rules.split(",")]


def _generic(model):
    """Registers the generic rule for every layer class of `model` that a
    text rule serves; the classes replaced."""
    from keras_neuron_sensitivity.engine import GenericRule, register_rule, rule_for

    replaced = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(rule_for(layer)).__name__ in TEXT_RULES:
            replaced.add(type(layer))
    for cls in replaced:
        register_rule(cls, GenericRule())
    return sorted(cls.__name__ for cls in replaced)


def measure(case, emit):
    import keras
    import numpy as np

    from benchmarks import models
    from keras_neuron_sensitivity import neuron_sensitivity

    name = case["model"]
    keras.utils.set_random_seed(0)
    shape = dict(blocks=BLOCKS, hidden=HIDDEN, heads=HEADS, vocabulary=VOCAB, sequence=LENGTH)
    model = getattr(models, name)(**shape)
    trained = model if name == "transformer_classifier" else models.with_head(model)
    result = {"runs": {}}
    if case["rules"] == "generic":
        result["generic_for"] = _generic(model)
    trained.compile(optimizer=keras.optimizers.Adam(),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = models.text_inputs(name, TRAIN_BATCH, LENGTH, VOCAB, seed=1)
    y = (np.arange(TRAIN_BATCH) % 2).astype("int32")
    _harness.progress(f"{name}, {case['rules']}: training step")
    result["step"] = _harness.training_step(trained, x, y)
    emit(result)
    probe = models.text_inputs(name, PROBE, LENGTH, VOCAB, seed=2)
    selections = {"default": None,  # what a user gets: the sites inside the blocks too
                  "top": [layer.name for layer in model.layers if layer.trainable_weights]}
    result["top_layers"] = selections["top"]
    for sites, layers in selections.items():
        for wrt in WRTS:
            run = result["runs"][f"{sites}/{wrt}"] = {"status": "running"}
            emit(result)
            _harness.progress(f"{name}, {case['rules']}: {sites} sites, {wrt}")

            def call(wrt=wrt, layers=layers):
                return neuron_sensitivity(model, probe, wrt=wrt, layers=layers)

            try:
                start = time.perf_counter()
                values = call()
                run["first"] = time.perf_counter() - start
                run["neurons"] = int(sum(v.size for v in values.values()))
                run["layers"] = len(values)
                run["method"] = values.method
                run["steady"] = _harness.median_seconds(call, case["repeats"])
                run["status"] = "ok"
            except Exception:  # noqa: BLE001 - reported in its row
                run["status"] = "error"
                run["error"] = traceback.format_exc()[-600:]
            emit(result)
    return result


def _entries(record):
    """`{(model, rules): (result, status)}` of a stored result."""
    return {(e["case"]["model"], e["case"]["rules"]): (e["result"] or {}, e["status"]) for e in record["cases"]}


def _cell(entry, run_key, key):
    if entry is None:
        return "-"
    result, status = entry
    run = result.get("runs", {}).get(run_key)
    if run is None or run["status"] != "ok":
        return (run or {}).get("status", status) if status == "ok" else status
    seconds = run[key]
    if key == "first":
        return _harness.duration(seconds)
    return f"{_harness.duration(seconds)} ({_harness.steps(seconds, result.get('step'))})"


def table(record):
    entries = _entries(record)
    models = [m for m in MODELS if any(k[0] == m for k in entries)]
    lines = ["| model | training step | sites | layers, neurons | to weights, closed form | to weights, generic | "
             "first call to weights, closed form / generic | to inputs, closed form | to inputs, generic |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        closed, generic = entries.get((name, "closed")), entries.get((name, "generic"))
        runs = (closed or generic)[0].get("runs", {})
        steps = " / ".join(_harness.duration(e[0].get("step")) for e in (closed, generic) if e)
        for sites, label in SITES.items():
            run = runs.get(f"{sites}/weights", {})
            size = f"{run['layers']}, {run['neurons']:,}" if "neurons" in run else "-"
            firsts = " / ".join(_cell(e, f"{sites}/weights", "first") for e in (closed, generic))
            cells = [_cell(e, f"{sites}/{wrt}", "steady") for wrt in WRTS for e in (closed, generic)]
            head = f"{LABELS[name]} | {steps}" if sites == "default" else " | "
            lines.append(f"| {head} | {label} | {size} | {cells[0]} | {cells[1]} | {firsts} | {cells[2]} | "
                         f"{cells[3]} |")
    lines += ["", "Steady calls (the median of the later calls), in brackets in training steps of batch 32 of the "
              "same model measured in the same process (each rules' own process: the training step column gives "
              "both, closed form / generic); the first call includes tracing."]
    return "\n".join(lines)
