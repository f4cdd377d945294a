"""From per-sample norms to what is reported: reductions and dead neurons.

Shared by every method, so that a reduction means the same whichever method
produced the per-sample values.
"""

import numpy as np

REDUCTIONS = ("mean", "rms", "max", None)


def reduce_samples(per_sample, reduction):
    """`(B, C)` per-sample norms -> `(C,)` by `reduction`; None keeps them."""
    if reduction is None:
        return per_sample
    if reduction == "mean":
        return per_sample.mean(axis=0)
    if reduction == "rms":
        return np.sqrt(np.mean(np.square(per_sample), axis=0))
    return per_sample.max(axis=0)


def dead_neurons(per_sample):
    """`(C,)` bool: sensitivity exactly zero on every probe sample."""
    return np.all(per_sample == 0, axis=0)
