"""The callback's cost on a Gemma-shaped decoder, in training steps of the same model.

The issue's configuration: keras_hub `Gemma3CausalLM` (random weights, no
preprocessor), 8 blocks, hidden 256, intermediate 1024, 4 query heads of 64
(1 key/value head), sequence 128, vocabulary 1,024, probe of 8. At the
callback's defaults: every default site (inside every block: norms,
projections, the feed-forward units, the heads), both `wrt`, `method="auto"`.

Printed, in one process:
- one training step (`train_on_batch`, batch 8, sequence 128), median of 10
  after 3 warm-up steps;
- the first logged epoch's computation (graph, sites, auto's prediction,
  tracing, the nothing-trainable-upstream pass), and the median of 3 later
  ones, as the callback runs them (`_computation.compute`, the same call);
- each as seconds and as training steps, against the targets (600 steps for
  the first logged epoch, 60 for each later one), and what auto chose.

    .venv/bin/python benchmarks/transformer_blocks.py             # about 10 minutes
    .venv/bin/python benchmarks/transformer_blocks.py --blocks 2  # a quick look
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _machine import machine_info, median_seconds  # noqa: E402

SEQUENCE, PROBE, VOCAB = 128, 8, 1024


def gemma(blocks):
    import keras_hub

    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=VOCAB, image_size=16, num_layers=blocks, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=256, intermediate_dim=1024, head_dim=64,
        vision_encoder=None,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def tokens(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, VOCAB, (n, SEQUENCE)).astype("int32"),
        "padding_mask": np.ones((n, SEQUENCE), "int32"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args(argv)
    from keras_neuron_sensitivity import _computation

    print("\n".join(machine_info()))
    print(f"Keras backend: {keras.backend.backend()}")
    keras.utils.set_random_seed(0)
    model = gemma(args.blocks)
    model.compile(optimizer="adam")
    batch = tokens(PROBE, 1)
    targets = np.roll(batch["token_ids"], -1, axis=1)
    for _ in range(3):
        model.train_on_batch(batch, targets)
    step = median_seconds(lambda: model.train_on_batch(batch, targets), 10)
    print(f"\nGemma-shaped decoder: {args.blocks} blocks, hidden 256, intermediate 1024, "
          f"sequence {SEQUENCE}, probe of {PROBE}; one training step (batch {PROBE}): {step * 1e3:.0f} ms")

    probe = tokens(PROBE, 2)
    settings = dict(method="auto", num_probes=None, seed=0, memory_budget_mb=1024)
    start = time.perf_counter()
    problem = _computation.prepare(model, probe, wrt=None, layers=None, what="probe_data")
    results = _computation.compute(problem, **settings)
    first = time.perf_counter() - start
    later = []
    for _ in range(3):
        start = time.perf_counter()
        _computation.compute(problem, **settings)
        later.append(time.perf_counter() - start)
    later = statistics.median(later)
    neurons = sum(v.shape[-1] for v in results["weights"].reduce("mean").values())
    inside = [k for k in problem.keys if k.count("/") >= 2]
    print(f"sites: {len(problem.keys)} ({len(inside)} inside blocks), {neurons} neurons; "
          f"auto chose: " + ", ".join(f"{w} {r.method.name}" for w, r in results.items()))
    print(f"first logged epoch: {first:.1f} s = {first / step:.0f} training steps (target: at most 600)")
    print(f"later logged epochs: {later:.2f} s = {later / step:.1f} training steps (target: at most 60)")


if __name__ == "__main__":
    sys.exit(main())
