"""From per-sample values to what is reported: reductions, standard errors.

Shared by every method, so that a reduction means the same whichever method
produced the per-sample values. The exact sweep gives per-sample norms
`(B, C)`; the estimator gives `m` unbiased draws of their squares
`(m, B, C)`, from which come the reported values and their standard errors.
"""

import numpy as np

REDUCTIONS = ("mean", "rms", "max", None)


class Sensitivities(dict):
    """`{layer_key: np.ndarray}`: per-neuron sensitivities, and how they were got.

    A plain dict of arrays (`(C,)` per layer, or `(B, C)` for
    `reduction=None`), with four attributes:

    Attributes:
        method: `"exact"` or `"estimate"`: which method produced the values
            (what `method="auto"` chose).
        num_probes: the number of random tangents of the estimate; None when
            exact.
        std_error: `{layer_key: np.ndarray}` shaped like the values: the
            standard error of each value from the spread of the estimator's
            tangents (delta method), zero when exact. A dead neuron's value
            is exactly zero under both methods, with zero error.
        frozen: `{layer_key: (C,) bool}`: the neurons with nothing trainable
            upstream (a frozen base, LoRA): their sensitivity to weights is
            exactly zero, but they are not dead. All False for the
            sensitivity to inputs.
    """

    def __init__(self, values, method, std_error, num_probes=None, frozen=None):
        super().__init__(values)
        self.method = method
        self.std_error = std_error
        self.num_probes = num_probes
        if frozen is None:
            frozen = {k: np.zeros(np.shape(v)[-1], bool) for k, v in values.items()}
        self.frozen = frozen

    def dead(self):
        """`{layer_key: (C,) bool}`: the dead neurons, sensitivity exactly
        zero on every probe sample, those with nothing trainable upstream
        left out (`frozen`)."""
        return {k: dead_neurons(v) & ~self.frozen[k] for k, v in self.items()}

    def __repr__(self):
        return f"Sensitivities(method={self.method!r}, {dict.__repr__(self)})"


def reduce_samples(per_sample, reduction):
    """`(B, C)` per-sample norms -> `(C,)` by `reduction`; None keeps them."""
    if reduction is None:
        return per_sample
    if reduction == "mean":
        return per_sample.mean(axis=0)
    if reduction == "rms":
        return np.sqrt(np.mean(np.square(per_sample), axis=0))
    return per_sample.max(axis=0)


def estimate_summary(squares, reduction):
    """`(m, B, C)` draws of the squared norms -> `(value, std_error)`.

    The per-sample value is `sqrt(mean_i q_i)`, unbiased in the square. The
    reduced value `R` is a smooth function of the per-sample squares, so to
    first order `R - E[R]` is the mean over tangents of `d_i = sum_n
    (dR / d sq_n) q_in`; its standard error is `std(d_i) / sqrt(m)`. This
    holds whether or not the samples share their tangents (the correlation
    is in the `d_i`).
    """
    m = squares.shape[0]
    sq = squares.mean(axis=0)
    per_sample = np.sqrt(sq)
    value = reduce_samples(per_sample, reduction)
    # dR/dsq_n for each reduction (zero where the value is exactly zero).
    with np.errstate(divide="ignore", invalid="ignore"):
        half_inverse = np.where(per_sample > 0, 0.5 / per_sample, 0.0)
        if reduction is None:
            spread = squares.std(axis=0, ddof=1) * half_inverse
            return value, spread / np.sqrt(m)
        if reduction == "mean":
            weights = half_inverse / sq.shape[0]
        elif reduction == "rms":
            weights = np.where(value > 0, 0.5 / value, 0.0) / sq.shape[0]
            weights = np.broadcast_to(weights, sq.shape)
        else:  # max: the derivative at the arg max sample
            weights = np.zeros_like(sq)
            top = per_sample.argmax(axis=0)
            columns = np.arange(sq.shape[1])
            weights[top, columns] = half_inverse[top, columns]
    d = np.einsum("mnc,nc->mc", squares, weights)
    return value, d.std(axis=0, ddof=1) / np.sqrt(m)


def dead_neurons(values):
    """`(C,)` bool: sensitivity exactly zero on every probe sample.

    Per-sample norms are non-negative, so every reduction is zero exactly
    when all samples are: `values` may be reduced or `(B, C)`.
    """
    values = np.asarray(values)
    return np.all(values == 0, axis=0) if values.ndim == 2 else values == 0
