"""The `sensitivity` run's layout: its tag names, and how a tensor is laid out.

Layout (docs/tensorboard.md repeats it): run `{log_dir}/sensitivity`; per layer key and
`wrt` in ("weights", "inputs"):

- histogram `sensitivity_to_{wrt}/{key}`: one value per neuron;
- scalar `mean_sensitivity_to_{wrt}/{key}`: the mean over neurons;
- scalar `dead_fraction_to_{wrt}/{key}`: the fraction of dead neurons;
- scalar `nonfinite_count_to_{wrt}/{key}`: neurons whose value is NaN or
  infinite (a diverging run); they are left out of the histogram and mean;
- tensor `per_neuron_to_{wrt}/{key}`: the per-neuron vector itself, exact;
- for values from the estimator only: tensor `per_neuron_error_to_{wrt}/{key}`,
  the per-neuron standard error of the logged value, and scalar
  `relative_error_to_{wrt}/{key}`, the median relative standard error over
  the layer's live neurons;
- for layers with neurons that have nothing trainable upstream (a frozen
  base, LoRA): tensor `frozen/{key}`, 1 for those neurons, and scalar
  `frozen_fraction/{key}`; they are not counted as dead;
- for attention-context sites (`.../heads`, neuron `h * head_dim + d`):
  tensor `heads/{key}`, the number of heads, at the run's first step;
- neuron health (with `activity=True`, the callback's default), per key:
  tensor `activity/{key}`, `(len(ACTIVITY_ROWS), C)` float32: the rows of
  `ACTIVITY_ROWS` (mean, mean |activation|, standard deviation, firing
  rate, tau-score, utility, slope, and the status's index in
  `health.STATUSES`); histogram `mean_activation/{key}`: each neuron's
  mean activation, one value per neuron (the per-neuron activation
  histogram); scalars `dormant_fraction/{key}` and `saturated_fraction/{key}`
  (the dead fraction is `dead_fraction_to_{wrt}/{key}`); and tensor
  `activity_thresholds`, `[tau, saturation threshold]`, at the run's first
  step;
- image `heatmap_to_{wrt}/{key}`: every neuron (rows) over the logged epochs
  (columns, at most `pictures.HEATMAP_COLUMNS`, spread over the run) on a
  log colour scale, dead neurons magenta; drawn after 1, 2, 4, ..., 64
  logged epochs, then every `pictures.HEATMAP_EVERY`, and at the end of
  training;

text summaries `dead_neurons` (a table of layers with their dead neurons'
indices) and `method` (which method produced each `wrt`), and `fit_epoch`
(data): the epoch index within its `fit` call. Step is the 0-based epoch
index, as `keras.callbacks.TensorBoard` uses, continued across `fit` calls.

A `fit` resumed from a backup older than its last logged epoch trains
logged epochs again (`SensitivityWriter.restart`): its first event is
preceded by a `SessionLog.START` at the first step trained again, the mark
TensorBoard's readers take for a restarted job, and `reader.read_run`
forgets the run's steps from there on as they do.
"""

import numpy as np

from keras_neuron_sensitivity.health import STATUSES

RUN_NAME = "sensitivity"
PLUGIN_NAME = "keras_neuron_sensitivity"
WRT_PREFIX = "per_neuron_to_"
ERROR_PREFIX = "per_neuron_error_to_"
# Per neuron, 1 where nothing trainable is upstream (sensitivity to weights
# exactly zero, but not dead): written only for layers that have such neurons.
FROZEN_PREFIX = "frozen/"
# For attention-context sites (heads x head_dim neurons, `block/.../heads`):
# the number of heads, so that a reader can group the neurons by head.
HEADS_PREFIX = "heads/"
ACTIVITY_PREFIX = "activity/"
# The rows of an `activity/{key}` tensor, in order; `status` holds the index
# of the neuron's status in `health.STATUSES`.
ACTIVITY_ROWS = ("mean", "mean_abs", "std", "firing_rate", "tau_score", "utility", "slope", "status")
THRESHOLDS_TAG = "activity_thresholds"
TEXT_TAG = "dead_neurons"
METHOD_TAG = "method"
EPOCH_TAG = "fit_epoch"


def histogram_tag(wrt, key):
    return f"sensitivity_to_{wrt}/{key}"


def mean_tag(wrt, key):
    return f"mean_sensitivity_to_{wrt}/{key}"


def dead_fraction_tag(wrt, key):
    return f"dead_fraction_to_{wrt}/{key}"


def nonfinite_tag(wrt, key):
    return f"nonfinite_count_to_{wrt}/{key}"


def values_tag(wrt, key):
    return f"{WRT_PREFIX}{wrt}/{key}"


def error_tag(wrt, key):
    return f"{ERROR_PREFIX}{wrt}/{key}"


def relative_error_tag(wrt, key):
    return f"relative_error_to_{wrt}/{key}"


def heatmap_tag(wrt, key):
    return f"heatmap_to_{wrt}/{key}"


def frozen_tag(key):
    return f"{FROZEN_PREFIX}{key}"


def heads_tag(key):
    return f"{HEADS_PREFIX}{key}"


def frozen_fraction_tag(key):
    return f"frozen_fraction/{key}"


def activity_tag(key):
    return f"{ACTIVITY_PREFIX}{key}"


def mean_activation_tag(key):
    return f"mean_activation/{key}"


def dormant_fraction_tag(key):
    return f"dormant_fraction/{key}"


def saturated_fraction_tag(key):
    return f"saturated_fraction/{key}"


def activity_rows(statistics):
    """`(len(ACTIVITY_ROWS), C)` float32: one site's `NeuronActivity` entry
    as the `activity/{key}` tensor stores it."""
    codes = np.searchsorted(_SORTED_STATUSES, statistics["status"])
    rows = [statistics[name] for name in ACTIVITY_ROWS[:-1]] + [_STATUS_CODES[codes]]
    return np.asarray(rows, np.float32)


_SORTED_STATUSES = np.sort(np.asarray(STATUSES))
_STATUS_CODES = np.array([STATUSES.index(s) for s in _SORTED_STATUSES])


def activity_from_rows(rows):
    """The inverse of `activity_rows`: `{statistic: (C,)}`, `status` as names."""
    rows = np.asarray(rows)
    out = {name: rows[i].astype(np.float32) for i, name in enumerate(ACTIVITY_ROWS[:-1])}
    out["status"] = np.asarray(STATUSES, dtype=str)[rows[-1].astype(np.int64)]
    return out
