"""Argument checks shared by `neuron_sensitivity` and the callback.

Each says what was received, what was expected and how to fix it.
"""

import math
import os

import numpy as np

from keras_neuron_sensitivity.engine.methods import METHODS
from keras_neuron_sensitivity.engine.summary import REDUCTIONS
from keras_neuron_sensitivity.engine.sweep import WRT_CHOICES

# Seeds are folded into stateless random ops as int64 pairs.
_MAX_SEED = 2**62


def check_wrt(wrt, allow_both):
    """`wrt` as a tuple of distinct entries of `WRT_CHOICES`."""
    if allow_both:
        values = (wrt,) if isinstance(wrt, str) else tuple(wrt or ())
        if values and all(v in WRT_CHOICES for v in values):
            return tuple(dict.fromkeys(values))
        expected = "'weights', 'inputs' or a tuple of both"
    else:
        if wrt in WRT_CHOICES:
            return (wrt,)
        expected = "'weights' or 'inputs'"
    raise ValueError(
        f"Received wrt={wrt!r}. Expected {expected}: the derivative of each "
        "neuron with respect to the trainable weights or to the model inputs."
    )


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Received reduction={reduction!r}. Expected one of {REDUCTIONS}: "
            "how the per-sample norms are reduced over the probe batch."
        )


def check_budget(memory_budget_mb):
    if (
        isinstance(memory_budget_mb, bool)
        or not isinstance(memory_budget_mb, (int, float, np.integer, np.floating))
        or not math.isfinite(memory_budget_mb)
        or memory_budget_mb <= 0
    ):
        raise ValueError(
            f"Received memory_budget_mb={memory_budget_mb!r}. Expected a "
            "positive, finite number of MiB, for example 1024."
        )


def check_method(method):
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"Received method={method!r}. Expected one of {METHODS}: 'exact' "
            "for the exact norms, 'estimate' for the unbiased random-tangent "
            "estimate (cost independent of the number of neurons), 'auto' to "
            "let the package pick the cheaper."
        )


def check_num_probes(num_probes):
    """None, or an int of at least 2 (one tangent gives no error bar)."""
    if num_probes is None:
        return None
    if is_int(num_probes) and num_probes >= 2:
        return int(num_probes)
    raise ValueError(
        f"Received num_probes={num_probes!r}. Expected None (the default, "
        "32) or an int of at least 2: the number of random tangents of the "
        "estimate; its relative error falls as 1/sqrt(2 * num_probes), and "
        "two are the fewest that give a standard error."
    )


def check_seed(seed):
    """None, or a non-negative int below 2**62."""
    if seed is None or (is_int(seed) and 0 <= seed < _MAX_SEED):
        return None if seed is None else int(seed)
    raise ValueError(
        f"Received seed={seed!r}. Expected None or a non-negative int below "
        "2**62, for example seed=0: the same seed gives the same estimate."
    )


def check_positive_int(name, value):
    if is_int(value) and value > 0:
        return int(value)
    raise ValueError(f"Received {name}={value!r}. Expected a positive int.")


def check_threshold(name, value, example, meaning):
    """`value` as a float: finite and not negative."""
    if (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    raise ValueError(
        f"Received {name}={value!r}. Expected a non-negative number, for "
        f"example {name}={example}: {meaning}."
    )


def check_dormant_threshold(value):
    return check_threshold(
        "dormant_threshold", value, 0.1,
        "a neuron whose mean |activation| is at most this fraction of its "
        "layer's average is dormant (tau of Sokar et al. 2023)",
    )


def check_saturation_threshold(value):
    return check_threshold(
        "saturation_threshold", value, 0.01,
        "a neuron that fires is saturated when its activation's mean "
        "derivative where it fires is at most this fraction of the "
        "activation's largest",
    )


def check_freq(freq):
    if is_int(freq):
        if freq >= 1:
            return int(freq)
    elif isinstance(freq, (list, tuple, set, range)) and freq:
        if all(is_int(e) and e >= 0 for e in freq):
            return frozenset(int(e) for e in freq)
    raise ValueError(
        f"Received freq={freq!r}. Expected a positive int N (log every N "
        "epochs: 0, N, 2N, ...) or a non-empty list of 0-based epoch indices, "
        "for example freq=1 or freq=[0, 5, 9]."
    )


def check_log_dir(log_dir):
    if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
        raise ValueError(
            f"Received log_dir={log_dir!r}. Expected a directory path (str or "
            "os.PathLike), for example 'logs'."
        )
    log_dir = os.fspath(log_dir)
    # The first existing ancestor decides whether the run can be created.
    existing = os.path.abspath(log_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"Received log_dir={log_dir!r}, but {existing!r} is a file, so no "
            "log directory can be created there. Expected a directory path. "
            "Choose another log_dir or move the file."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"Received log_dir={log_dir!r}, but {existing!r} is not writable. "
            "Expected a directory this process can write to. Choose another "
            "log_dir or fix its permissions."
        )
    return log_dir


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
