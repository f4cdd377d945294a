"""Neuron health from its definitions, in float64 NumPy (no TensorFlow, no
package import): shared by `test_activity.py` and the backend tests."""

import keras
import numpy as np

# Activations that are "off" at or below zero: their firing rate counts the
# entries above zero (the others', the nonzero entries).
RELU_LIKE_NAMES = {"relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "hard_silu", "mish", "celu"}
RELU_LIKE_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)


def relu_like(layer):
    if isinstance(layer, RELU_LIKE_LAYERS):
        return True
    return getattr(getattr(layer, "activation", None), "__name__", None) in RELU_LIKE_NAMES


def expected(y, keep=None, positive=False):
    """The statistics of one site's tensor `y` `(n, ..., C)` over the entries
    `keep` (`(n, ...)` bool, None: all): mean, mean |y|, standard deviation
    (population), firing rate (above zero when `positive`, else nonzero)
    and tau-score (mean |y| over its mean over the neurons)."""
    y = np.asarray(y, np.float64)
    y = y.reshape(-1, y.shape[-1])
    if keep is not None:
        y = y[np.asarray(keep, bool).reshape(-1)]
    mean_abs = np.abs(y).mean(axis=0)
    fires = y > 0 if positive else y != 0
    return {
        "mean": y.mean(axis=0),
        "mean_abs": mean_abs,
        "std": y.std(axis=0),
        "firing_rate": fires.mean(axis=0),
        "tau_score": mean_abs / mean_abs.mean(),
    }


def check(got, want, key, rtol=1e-5, atol=1e-6):
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=f"{key} {name}")
