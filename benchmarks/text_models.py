"""Sensitivity of tiny language models, in training steps of the same model.

For each model: `neuron_sensitivity(model, probe)` at its default layers, to
the weights and to the inputs (the embedded input for token ids), after a
warm-up call that traces (its time is shown too), median of a few runs; and
one `train_on_batch` step of the same model with a classification head,
batch 32, median of 50 after warm-up. Each (model, rules) pair runs in its
own process, which times its own training step: read the ratios, the
seconds move with the machine's load.

Rules: "closed form" is the package as it is; "generic" routes attention,
keras_hub's transformer layers and the language-model embeddings through the
generic rule (one weight gradient per neuron and sample, in a loop), as the
package did before they had rules of their own.

    .venv/bin/python benchmarks/text_models.py            # about 3 minutes
    .venv/bin/python benchmarks/text_models.py --models bert --rules closed
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _machine import cpu_model, loadavg, median_seconds  # noqa: E402
from keras_neuron_sensitivity import neuron_sensitivity  # noqa: E402

VOCAB, LENGTH, HIDDEN, PROBE, TRAIN_BATCH = 100, 8, 32, 8, 32


def _ids(n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, LENGTH)).astype("int32")
    mask = np.ones((n, LENGTH), "int32")
    mask[: n // 2, -2:] = 0  # some padding
    return ids, mask


def bert():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
        intermediate_dim=2 * HIDDEN, max_sequence_length=LENGTH)

    def inputs(n, seed):
        ids, mask = _ids(n, seed)
        return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}

    head = keras.layers.Dense(2)(backbone.output["pooled_output"])
    return backbone, keras.Model(backbone.input, head), inputs


def gpt2():
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
        intermediate_dim=2 * HIDDEN, max_sequence_length=LENGTH)

    def inputs(n, seed):
        ids, mask = _ids(n, seed)
        return {"token_ids": ids, "padding_mask": mask}

    pooled = keras.layers.GlobalAveragePooling1D()(backbone.output)
    return backbone, keras.Model(backbone.input, keras.layers.Dense(2)(pooled)), inputs


def mha_classifier():
    L = keras.layers
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    h = L.Embedding(VOCAB, HIDDEN, name="token_embedding")(ids)
    for i in range(2):
        a = L.MultiHeadAttention(2, HIDDEN // 2, name=f"attention_{i}")(h, h)
        h = L.LayerNormalization(name=f"norm_{i}")(L.Add()([h, a]))
        f = L.Dense(2 * HIDDEN, activation="relu", name=f"ffn_in_{i}")(h)
        h = L.LayerNormalization(name=f"ffn_norm_{i}")(L.Add()([h, L.Dense(HIDDEN, name=f"ffn_out_{i}")(f)]))
    out = L.Dense(2, name="out")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(ids, out)
    return model, model, lambda n, seed: _ids(n, seed)[0]


MODELS = {"bert": bert, "gpt2": gpt2, "mha": mha_classifier}


def _generic_rules(model):
    """Routes the text layers' calls through the generic rule."""
    from keras_neuron_sensitivity import _computation
    from keras_neuron_sensitivity.engine.rules import attention, base, table, token_embedding

    _computation.model_graph(model)  # registers keras_hub's rules, to be replaced
    text_rules = (
        attention.MultiHeadAttentionRule,
        attention.TransformerEncoderRule,
        attention.TransformerDecoderRule,
        token_embedding.ReversibleEmbeddingRule,
        token_embedding.PositionEmbeddingRule,
        token_embedding.TokenAndPositionEmbeddingRule,
    )
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(table.rule_for(layer), text_rules):
            table.register_rule(type(layer), base.GenericRule())


def run(name, rules, repeats):
    keras.utils.set_random_seed(0)
    model, trained, inputs = MODELS[name]()
    if rules == "generic":
        _generic_rules(model)
    trained.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train, y_train = inputs(TRAIN_BATCH, 1), np.arange(TRAIN_BATCH) % 2
    trained.train_on_batch(x_train, y_train)
    step = median_seconds(lambda: trained.train_on_batch(x_train, y_train), 50)
    probe = inputs(PROBE, 2)
    row = [f"{name}, {rules}", f"{step * 1e3:.1f} ms"]
    neurons = "?"
    for wrt in ("weights", "inputs"):
        start = time.perf_counter()
        try:
            result = neuron_sensitivity(model, probe, wrt=wrt)  # warm-up: traces
        except Exception as error:  # noqa: BLE001 - reported in the table
            row += [f"fails: {type(error).__name__}", ""]
            continue
        first = time.perf_counter() - start
        neurons = sum(v.size for v in result.values())
        seconds = median_seconds(lambda: neuron_sensitivity(model, probe, wrt=wrt), repeats)
        row += [f"{seconds * 1e3:.0f} ms ({seconds / step:.1f} steps)", f"{first:.1f} s"]
    print(f"| {row[0]} ({neurons} neurons) | {' | '.join(row[1:])} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rules", default="closed,generic", help="closed, generic or both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run(args.models, args.rules, args.repeats)
        return
    print(f"CPU: {cpu_model()}; load average {loadavg()}; probe B={PROBE}, "
          f"sequence {LENGTH}, hidden {HIDDEN}, training batch {TRAIN_BATCH}")
    print("| model, rules | one training step | to weights | first call (traces) "
          "| to inputs | first call (traces) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for rules in args.rules.split(","):
            rules = {"closed": "closed form"}.get(rules, rules)
            subprocess.run(
                [sys.executable, __file__, "--worker", "--models", name,
                 "--rules", rules, "--repeats", str(args.repeats)],
                check=False,
            )


if __name__ == "__main__":
    main()
