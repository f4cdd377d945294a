"""Writing sensitivities to TensorBoard, and reading them back.

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
  (columns, at most `HEATMAP_COLUMNS`, spread over the run) on a log colour
  scale, dead neurons magenta; drawn after 1, 2, 4, ..., 64 logged epochs,
  then every `HEATMAP_EVERY`, and at the end of training;

text summaries `dead_neurons` (a table of layers with their dead neurons'
indices) and `method` (which method produced each `wrt`), and `fit_epoch`
(data): the epoch index within its `fit` call. Step is the 0-based epoch
index, as `keras.callbacks.TensorBoard` uses, continued across `fit` calls.

A `fit` resumed from a backup older than its last logged epoch trains
logged epochs again (`SensitivityWriter.restart`): its first event is
preceded by a `SessionLog.START` at the first step trained again, the mark
TensorBoard's readers take for a restarted job, and `read_run` forgets the
run's steps from there on as they do.
"""

import itertools
import os
import socket
import struct
import time
import zlib

import google_crc32c
import numpy as np
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

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
MEAN_ACTIVATION_DESCRIPTION = (
    "Per neuron, not per entry: each neuron's mean activation over the probe "
    "batch's samples and positions (padded positions left out), one value per "
    "neuron, so the counts sum to the layer's neuron count."
)
TEXT_TAG = "dead_neurons"
METHOD_TAG = "method"
# The colour scale's limits: these percentiles of the image's positive
# values, so that a few outlying neurons cannot push every other cell to one
# end of the palette. The dashboard's matrices use the same rule.
HEATMAP_QUANTILES = (0.05, 0.95)
HEATMAP_DESCRIPTION = (
    "Rows: the layer's neurons, 0 at the top. Columns: the logged epochs, "
    "oldest on the left. Colour: log10 of the sensitivity, from the 5th "
    "percentile of the image's non-zero values (dark purple) to the 95th "
    "(yellow); values beyond take the end colours, so a few outlying neurons "
    "cannot wash out the others. The strip at the bottom is that scale, with "
    "its two limits printed under its ends; the `dead_neurons` text gives "
    "each epoch's smallest and largest value. Magenta: dead (exactly zero). "
    "Pale blue: nothing trainable upstream (zero, but not dead). Grey: NaN or "
    "infinite."
)


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


def histogram_buckets(values, num_bins):
    """`(num_bins, 3)` rows `[left, right, count]`, as `tf.summary.histogram`.

    Equal-width buckets from the minimum to the maximum; when every value is
    the same, all edges are that value and the last bucket holds the count.
    """
    values = np.asarray(values, np.float64).ravel()
    low, high = values.min(), values.max()
    if low == high:
        counts = np.zeros(num_bins)
        counts[-1] = values.size
        edges = np.full(num_bins + 1, high)
    else:
        width = (high - low) / num_bins
        index = np.minimum(np.floor((values - low) / width), num_bins - 1)
        counts = np.bincount(index.astype(np.int64), minlength=num_bins)
        edges = np.linspace(low, high, num_bins + 1)
        edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


# Viridis at five stops: perceptually ordered, readable in grey, and without
# magenta, which is kept for dead neurons.
_COLOURS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    np.float64,
)
_DEAD = (255, 0, 255)
_NONFINITE = (128, 128, 128)
_FROZEN = (190, 215, 235)  # nothing trainable upstream: pale blue


def _colour(t):
    """Colours for `t` in [0, 1]."""
    position = np.clip(t, 0, 1) * (len(_COLOURS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_COLOURS) - 2)
    frac = (position - low)[..., None]
    return _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac


def colour_limits(matrix):
    """`(low, high)`: the log10 limits of a heat map's colour scale.

    The `HEATMAP_QUANTILES` of log10 of the positive finite values (numpy's
    linear interpolation); None when there is none (all dead or NaN).
    """
    matrix = np.asarray(matrix, np.float64)
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    if not positive.size:
        return None
    low, high = np.quantile(np.log10(positive), HEATMAP_QUANTILES)
    return float(low), float(high)


def heatmap(columns, frozen=None):
    """`(H, W, 3)` uint8: neurons (rows) by logged epochs (columns).

    Below the cells, the colour scale as a strip with its limits written
    under its two ends (see `HEATMAP_DESCRIPTION`).

    Args:
        columns: one `(C,)` per-neuron vector per logged epoch, oldest first.
        frozen: one `(C,)` bool per column (or None): the neurons with
            nothing trainable upstream, drawn pale blue, not as dead.
    """
    matrix = np.stack([np.asarray(c, np.float64) for c in columns], axis=1)
    finite = np.isfinite(matrix)
    positive = finite & (matrix > 0)
    image = np.zeros(matrix.shape + (3,))
    limits = colour_limits(matrix)
    if limits is not None:
        low, high = limits
        logs = np.log10(matrix[positive])
        # One distinct value: the middle colour rather than an end.
        image[positive] = _colour((logs - low) / (high - low) if high > low else 0.5)
    image[finite & (matrix == 0)] = _DEAD
    if frozen is not None:
        image[np.stack(frozen, axis=1) & finite & (matrix == 0)] = _FROZEN
    image[~finite] = _NONFINITE
    neurons, epochs = matrix.shape
    cell_height = int(np.clip(192 // neurons, 1, 8))
    # Wide enough for the two limits under the strip.
    cell_width = max(int(np.clip(256 // epochs, 1, 16)), -(-_LEGEND_MIN_WIDTH // epochs))
    image = np.repeat(np.repeat(image, cell_height, 0), cell_width, 1)
    width = image.shape[1]
    gap = np.full((2, width, 3), 255.0)
    scale = np.repeat(_colour(np.linspace(0, 1, width))[None], 6, axis=0)
    labels = np.full((_GLYPH_SCALE * 5 + 4, width, 3), 255.0)
    if limits is not None:
        left, right = (_label(_short_number(10 ** v)) for v in limits)
        labels[2:2 + left.shape[0], :left.shape[1]][left] = _INK
        labels[2:2 + right.shape[0], width - right.shape[1]:][right] = _INK
    return np.rint(np.concatenate([image, gap, scale, labels])).astype(np.uint8)


# Digits for the legend, 3 x 5 pixels each (a bitmap font: PNGs are drawn
# here with NumPy alone).
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001010010", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "E": "111100111100111",
}
_GLYPH_SCALE = 2
_INK = (64, 64, 64)
_LEGEND_MIN_WIDTH = 128  # two labels of up to 7 glyphs, 8 pixels apart


def _short_number(value):
    """Two significant digits, the exponent short: 0.028, 4.1, 1.2E-5."""
    text = f"{value:.2g}".upper()
    if "E" in text:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}E{int(exponent)}"
    return text


def _label(text):
    """A boolean `(10, 8 * len(text) - 2)` mask of `text` in `_GLYPHS`."""
    glyphs = [np.array(list(_GLYPHS[c]), int).reshape(5, 3).astype(bool) for c in text if c in _GLYPHS]
    space = np.zeros((5, 1), bool)
    mask = np.concatenate([part for glyph in glyphs for part in (glyph, space)][:-1], axis=1)
    return np.repeat(np.repeat(mask, _GLYPH_SCALE, 0), _GLYPH_SCALE, 1)


def encode_png(image):
    """PNG bytes of an `(H, W, 3)` uint8 image (8-bit RGB, no filtering)."""
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        chunk(b"IHDR", header),
        chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
        chunk(b"IEND", b""),
    ])


def median_relative_error(values, errors):
    """The median of `errors / values` over neurons with a finite, non-zero
    value (a dead neuron's value is exact: it has no relative error); NaN
    when there is none."""
    values, errors = np.asarray(values, np.float64), np.asarray(errors, np.float64)
    live = np.isfinite(values) & (values != 0) & np.isfinite(errors)
    return float(np.median(errors[live] / values[live])) if live.any() else float("nan")


def _dead_table(step, reduced, dead):
    lines = [
        f"Epoch {step}: dead neurons (sensitivity exactly zero on every probe sample).",
        "",
        "| layer | to | neurons | dead | dead neuron indices | nothing trainable upstream | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for wrt, per_layer in reduced.items():
        for key, vector in per_layer.items():
            indices = np.flatnonzero(dead[wrt][key])
            shown = ", ".join(str(i) for i in indices[:32])
            if len(indices) > 32:
                shown += f", ... ({len(indices) - 32} more)"
            frozen = getattr(per_layer, "frozen", {}).get(key)
            frozen = int(frozen.sum()) if frozen is not None else 0
            finite = vector[np.isfinite(vector)]
            low, high = (f"{finite.min():.3g}", f"{finite.max():.3g}") if finite.size else ("-", "-")
            lines.append(
                f"| {key} | {wrt} | {vector.size} | {len(indices)} | {shown or '-'} | {frozen or '-'} | {low} | {high} |"
            )
    return "\n".join(lines)


_HISTOGRAM, _SCALAR, _VALUES, _IMAGE, _TEXT, _EPOCH, _ACTIVATION, _NUMBERS = (
    "histogram", "scalar", "values", "image", "text", "epoch", "activation", "numbers"
)
# The data class lets TensorBoard's data providers serve these tensors
# (`list_tensors`); without it they are stored but never listed.
_OURS = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME),
    data_class=summary_pb2.DATA_CLASS_TENSOR,
)
_METADATA = {
    _HISTOGRAM: histogram_metadata.create_summary_metadata(None, None),
    _ACTIVATION: histogram_metadata.create_summary_metadata(None, MEAN_ACTIVATION_DESCRIPTION),
    _SCALAR: scalar_metadata.create_summary_metadata(None, None),
    _VALUES: _OURS,
    _IMAGE: image_metadata.create_summary_metadata(None, HEATMAP_DESCRIPTION),
    _TEXT: text_metadata.create_summary_metadata(None, None),
    _EPOCH: _OURS,
    _NUMBERS: _OURS,
}
# Numeric kinds: (NumPy dtype, TensorProto dtype). Images and text are strings.
_NUMERIC = {
    _HISTOGRAM: (np.float64, types_pb2.DT_DOUBLE),
    _ACTIVATION: (np.float64, types_pb2.DT_DOUBLE),
    _SCALAR: (np.float32, types_pb2.DT_FLOAT),
    _VALUES: (np.float32, types_pb2.DT_FLOAT),
    _EPOCH: (np.int64, types_pb2.DT_INT64),
    _NUMBERS: (np.float64, types_pb2.DT_DOUBLE),
}

# Heat maps hold the whole history, so drawing them every epoch would be
# wasted work (it costs more than the sweep on small models) and would make
# the event file grow with the square of the epochs. They are drawn after 1,
# 2, 4, ..., 64 logged epochs, then every 64 (and when training ends), with
# at most HEATMAP_COLUMNS columns: so each drawing has a bounded size and the
# file grows by a bounded amount per logged epoch however long the run.
HEATMAP_COLUMNS = 128
HEATMAP_EVERY = 64


def heatmap_due(logged):
    """Whether the heat maps are drawn after the `logged`-th logged epoch."""
    if logged < HEATMAP_EVERY:
        return logged & (logged - 1) == 0
    return logged % HEATMAP_EVERY == 0


def heatmap_columns(steps):
    """The logged steps a heat map shows: all of them, or `HEATMAP_COLUMNS`
    spread evenly from the first to the last."""
    steps = sorted(steps)
    if len(steps) <= HEATMAP_COLUMNS:
        return steps
    picks = np.linspace(0, len(steps) - 1, HEATMAP_COLUMNS).round().astype(int)
    return [steps[i] for i in picks]


class SensitivityWriter:
    """The `sensitivity` run's writer: created on first use, flushed per epoch.

    Writes are synchronous (`_EventFile`): when `write` returns, the epoch is
    readable by TensorBoard and `load_sensitivity`; when it raises `OSError`
    (a full disk, a read-only file system), what was written before stays
    readable and the next `write` tries again. A run directory removed while
    training (a cleanup job) is created again at the next write, and said so
    in `notices`.

    Args:
        log_dir: the directory shared with `keras.callbacks.TensorBoard`.
        num_bins: histogram buckets.
    """

    def __init__(self, log_dir, num_bins):
        self.run_dir = os.path.join(os.fspath(log_dir), RUN_NAME)
        self.num_bins = num_bins
        self.notices = []  # things the user should hear of, once each
        self._file = None
        self._history = None  # {wrt: {key: {step: vector}}}, disk included
        self._steps = None  # {step: epoch of its `fit`, or None}, disk included
        self._frozen = None  # {key: {step: mask}} of layers with frozen neurons
        self._run = None  # what the disk held when loaded (`_Run`), kept current
        self._logged = 0  # epochs logged by this writer
        self._last_written = self._heatmap_step = None
        self._restart = None  # a restart's step, until it is on disk

    def history(self):
        """What the run holds: `{wrt: {key: {step: vector}}}`, disk included.

        Lets a new callback (or a new `fit` with the same one) continue the
        run, and its heat maps, instead of starting them again.
        """
        self._load()
        return self._history

    def steps(self):
        """`{step: epoch}`: the steps the run holds, each with the epoch of
        its `fit` that produced it (None for runs written before it was
        recorded). Disk included."""
        self._load()
        return self._steps

    def last_step(self):
        """The largest step already in the run, or None."""
        return max(self.steps(), default=None)

    def _load(self):
        if self._history is None:
            self._run = _read(self.run_dir)
            self._history, self._steps, self._frozen = self._run.values, self._run.steps, self._run.frozen

    def restart(self, step):
        """Forgets the run's steps from `step` on: they are trained again.

        For a `fit` that `BackupAndRestore` resumed from a backup older than
        the last logged epoch. The steps are dropped from `history()`,
        `steps()` and the heat maps now, and for every reader with the next
        event written (`write`, or `finish`): it is preceded by a
        `SessionLog.START` at `step`, after which TensorBoard and `read_run`
        forget them too. That event also draws the heat maps, so that none
        drawn from the abandoned steps is left at a later step.

        Args:
            step: the first step trained again.
        """
        self._load()
        self._run.forget_from(step)
        if self._last_written is not None and self._last_written >= step:
            self._last_written = self._heatmap_step = None
        self._restart = step if self._restart is None else min(self._restart, step)

    def write(
        self, step, reduced, dead, errors=None, methods=None, epoch=None, heads=None, activity=None
    ):
        """Writes one epoch and flushes it.

        Args:
            step: the TensorBoard step (the epoch index, continued across
                `fit` calls).
            reduced: `{wrt: {key: (C,) per-neuron sensitivity}}`.
            dead: `{wrt: {key: (C,) bool}}`.
            errors: `{wrt: {key: (C,) standard error}}` for the `wrt`s that
                the estimator computed; None or missing `wrt`s: exact.
            methods: `{wrt: description}`, the method that produced each
                `wrt` ("exact", "estimate (32 probes)"), for the text entry.
            epoch: the epoch of the current `fit` (recorded so that a `fit`
                resumed by `BackupAndRestore` continues the same steps).
                Defaults to `step`.
            heads: `{key: number of heads}` for attention-context sites,
                written with the first step this writer writes.
            activity: a `health.NeuronActivity` of this epoch, or None.

        Raises:
            OSError: the event could not be written (it is kept in memory,
                in `history()` and the heat maps, all the same).
        """
        errors = errors or {}
        history = self.history()
        self._steps[step] = step if epoch is None else epoch
        entries = []
        for wrt, per_layer in reduced.items():
            for key, vector in per_layer.items():
                per_step = history.setdefault(wrt, {}).setdefault(key, {})
                per_step[step] = vector
                # A diverging run gives NaN or Inf: count them, bin the rest.
                finite = vector[np.isfinite(vector)]
                if finite.size:
                    entries.append((histogram_tag(wrt, key), _HISTOGRAM,
                                    histogram_buckets(finite, self.num_bins)))
                    entries.append((mean_tag(wrt, key), _SCALAR, finite.mean()))
                entries.append((dead_fraction_tag(wrt, key), _SCALAR,
                                np.mean(dead[wrt][key])))
                entries.append((nonfinite_tag(wrt, key), _SCALAR,
                                vector.size - finite.size))
                entries.append((values_tag(wrt, key), _VALUES, vector))
                frozen = getattr(per_layer, "frozen", {}).get(key)
                if frozen is not None and frozen.any():
                    self._frozen.setdefault(key, {})[step] = frozen
                    entries.append((frozen_tag(key), _VALUES, frozen.astype(np.float32)))
                    entries.append((frozen_fraction_tag(key), _SCALAR, frozen.mean()))
                error = errors.get(wrt, {}).get(key)
                if error is not None:
                    entries.append((error_tag(wrt, key), _VALUES, error))
                    relative = median_relative_error(vector, error)
                    if np.isfinite(relative):
                        entries.append((relative_error_tag(wrt, key), _SCALAR, relative))
        if activity is not None:
            entries += _activity_entries(activity, self.num_bins)
        entries.append((TEXT_TAG, _TEXT, _dead_table(step, reduced, dead).encode()))
        if methods:
            lines = [f"Epoch {step}:"] + [f"- to {w}: {m}" for w, m in methods.items()]
            entries.append((METHOD_TAG, _TEXT, "\n".join(lines).encode()))
        entries.append((EPOCH_TAG, _EPOCH, self._steps[step]))
        # After a restart too: TensorBoard's Rust data server forgets a tag's
        # steps from `step` on only when that tag is written at `step`.
        restarting = self._restart is not None
        if self._logged == 0 or restarting:
            entries += [(heads_tag(key), _EPOCH, count) for key, count in (heads or {}).items()]
            if activity is not None:
                thresholds = [activity.dormant_threshold, activity.saturation_threshold]
                entries.append((THRESHOLDS_TAG, _NUMBERS, thresholds))
        self._logged += 1
        drawn = heatmap_due(self._logged) or restarting
        if drawn:
            entries += self._heatmap_entries(step)
        self._emit(step, entries)
        if drawn:
            self._heatmap_step = step

    def finish(self):
        """Draws the heat maps at the last logged step, if not drawn yet;
        writes a `restart` that no event has carried yet.

        Raises:
            OSError: as `write`.
        """
        if self._last_written is not None and self._heatmap_step != self._last_written:
            self._emit(self._last_written, self._heatmap_entries(self._last_written))
            self._heatmap_step = self._last_written
        elif self._restart is not None:
            self._emit(self._restart, [])

    def _heatmap_entries(self, step):
        entries = []
        for wrt, per_layer in self.history().items():
            for key, per_step in per_layer.items():
                if step not in per_step:
                    continue
                shape = per_step[step].shape
                steps = heatmap_columns(
                    [s for s in per_step if s <= step and per_step[s].shape == shape]
                )
                frozen = None
                if wrt == "weights" and key in self._frozen:
                    masks = self._frozen[key]
                    frozen = [masks.get(s, np.zeros(shape, bool)) for s in steps]
                image = heatmap([per_step[s] for s in steps], frozen)
                entries.append((heatmap_tag(wrt, key), _IMAGE, [
                    str(image.shape[1]).encode(),
                    str(image.shape[0]).encode(),
                    encode_png(image),
                ]))
        return entries

    def _emit(self, step, entries):
        """Writes one event of `entries` at `step` (none: no event), after
        the marks of a pending `restart`, all in one write."""
        file = self._event_file()
        events = []
        if self._restart is not None:
            start = event_pb2.Event(
                wall_time=time.time(), step=int(self._restart),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            ).SerializeToString()
            # Twice: TensorBoard's Python loader takes a run's first START as
            # the job's beginning, not a restart (plugin_event_accumulator's
            # `_CheckForRestartAndMaybePurge`), and a run may have none
            # before this one. A second START at the same step forgets
            # nothing more.
            events += [start, start]
        if entries:
            values = []
            for tag, kind, value in entries:
                value = summary_pb2.Summary.Value(tag=tag, tensor=_tensor_proto(kind, value))
                # Readers take a tag's plugin from its first value in a file
                # (as tf.summary writes it): later values need no metadata.
                if tag not in file.tags:
                    value.metadata.CopyFrom(_METADATA[kind])
                values.append(value)
            event = event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
            events.append(event.SerializeToString())
        file.append(*events)
        file.tags.update(tag for tag, _, _ in entries)
        self._restart = None
        if entries:
            self._last_written = step

    def _event_file(self):
        """The open event file; a new one if the run directory was removed."""
        if self._file is not None and (self._file.broken or self._file.removed()):
            if not self._file.broken:
                self.notices.append((
                    "removed",
                    f"The run directory {self.run_dir} (or its event file) was "
                    "removed during training. It is created again and the "
                    "following epochs are written there; what was written "
                    "before is gone (the heat maps, drawn from memory, keep it).",
                ))
            self._file.close()
            self._file = None
        if self._file is None:
            self._file = _EventFile(self.run_dir)
        return self._file

    def open(self):
        """Creates the run directory and its event file now, so that a reader
        finds the run from the start of training.

        Raises:
            OSError: as `write` (the next `write` tries again).
        """
        self._event_file()

    def close(self):
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


EPOCH_TAG = "fit_epoch"


def _activity_entries(activity, num_bins):
    """The entries of one epoch's neuron health (the module docstring)."""
    entries = []
    for key, statistics in activity.items():
        means = np.asarray(statistics["mean"], np.float64)
        finite = means[np.isfinite(means)]
        if finite.size:
            entries.append((mean_activation_tag(key), _ACTIVATION, histogram_buckets(finite, num_bins)))
        status = statistics["status"]
        entries.append((dormant_fraction_tag(key), _SCALAR, np.mean(status == "dormant")))
        entries.append((saturated_fraction_tag(key), _SCALAR, np.mean(status == "saturated")))
        entries.append((activity_tag(key), _VALUES, activity_rows(statistics)))
    return entries



def _tensor_proto(kind, value):
    """A `TensorProto` built directly (about 20x faster than
    `tensor_util.make_tensor_proto`, which inspects every value)."""
    if kind in (_IMAGE, _TEXT):
        strings = [value] if isinstance(value, bytes) else list(value)
        shape = [] if isinstance(value, bytes) else [len(strings)]
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=_shape_proto(shape), string_val=strings
        )
    np_dtype, dtype = _NUMERIC[kind]
    array = np.asarray(value, np_dtype)
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=_shape_proto(array.shape), tensor_content=array.tobytes()
    )


def _shape_proto(shape):
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in shape]
    )


_FILE_NUMBERS = itertools.count()


class _EventFile:
    """One event file, written synchronously with plain file I/O.

    TensorBoard's own `EventFileWriter` writes from a thread of its own: on a
    full disk it prints a traceback from that thread and raises
    `ResourceExhaustedError` from `flush`/`close` (docs/how-it-computes.md, "Traps of the stack"). Here every
    event is one unbuffered `write`: when `append` returns, the event is
    with the operating system (any reader sees it); when it raises
    `OSError`, the file is cut back to its last whole event first, so what
    was written before stays readable (a partial record would make readers
    stop there) and a later `append` can succeed.
    """

    def __init__(self, run_dir):
        os.makedirs(run_dir, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_FILE_NUMBERS):06d}"
        )
        self.path = os.path.join(run_dir, name)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0  # bytes of whole events in the file
        self.tags = set()  # tags written, with their metadata, to this file
        self.broken = False  # could not be cut back: start a new file

    def removed(self):
        """Whether the file was deleted (for example with its directory)."""
        try:
            return os.fstat(self._file.fileno()).st_nlink == 0
        except OSError:
            return True

    def append(self, *events):
        """Writes `events` (serialized) in one write: all of them, or none."""
        data = b"".join(_record(event) for event in events)
        if self._size == 0:  # every event file starts with its version
            version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            data = _record(version.SerializeToString()) + data
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError:
            try:
                os.ftruncate(self._file.fileno(), self._size)
            except OSError:
                self.broken = True
            raise
        self._size += len(data)

    def close(self):
        try:
            self._file.close()
        except OSError:
            pass  # unbuffered: nothing was left to write


def masked_crc32c(data):
    """TFRecord's masked CRC-32C of `data` (in C: TensorBoard's fallback
    without TensorFlow computes it in Python, about 5 MB/s)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data):
    """TFRecord framing: length, its masked CRC-32C, data, its masked CRC-32C."""
    header = struct.pack("<Q", len(data))
    return b"".join([
        header,
        struct.pack("<I", masked_crc32c(header)),
        data,
        struct.pack("<I", masked_crc32c(data)),
    ])


def read_run(run_dir):
    """The per-neuron vectors of a run: `{wrt: {key: {step: (C,) array}}}`."""
    return _read(run_dir).values


def read_frozen(run_dir):
    """`{key: {step: (C,) bool}}`: the neurons with nothing trainable
    upstream, for the layers and steps that had any."""
    return _read(run_dir).frozen


def read_activity(run_dir):
    """`({key: {step: (len(ACTIVITY_ROWS), C) float32}}, thresholds)`: the
    neuron health a run holds (`activity_from_rows` reads one), and its
    `[tau, saturation threshold]` (None if not logged)."""
    run = _read(run_dir)
    return run.activity, run.thresholds


class _Run:
    """What a run holds, as `_read` finds it: `values` (`read_run`'s),
    `steps` (`{step: epoch of its fit or None}`), `frozen` (`read_frozen`'s),
    `activity` and `thresholds` (`read_activity`'s)."""

    def __init__(self):
        self.values, self.steps, self.frozen, self.activity = {}, {}, {}, {}
        self.thresholds = None

    def forget_from(self, step):
        """Drops the steps from `step` on, and the layers left without one."""
        per_steps = [self.steps, *self.frozen.values(), *self.activity.values()]
        per_steps += [per_step for per_layer in self.values.values() for per_step in per_layer.values()]
        for per_step in per_steps:
            for later in [s for s in per_step if s >= step]:
                del per_step[later]
        for per_key in [self.frozen, self.activity, *self.values.values()]:
            for key in [key for key, per_step in per_key.items() if not per_step]:
                del per_key[key]
        for wrt in [wrt for wrt, per_layer in self.values.items() if not per_layer]:
            del self.values[wrt]


def _read(run_dir):
    """The run at `run_dir`, a `_Run`.

    Reads as TensorBoard's Python loader does: the event files in the order
    of their names, and a `SessionLog.START` at step `s` (a restarted job)
    forgets the steps from `s` on read so far (`_MaybePurgeOrphanedData` of
    `plugin_event_accumulator`, for files of version 2, which every file
    here is). That loader takes a run's first START for the job's beginning
    and forgets nothing then; the writer writes its STARTs in pairs, so the
    two agree on every run written here.
    """
    run = _Run()
    if not os.path.isdir(run_dir):
        return run
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." not in name:
            continue
        for event in _read_events(os.path.join(run_dir, name)):
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                run.forget_from(event.step)
            for value in event.summary.value:
                tag = value.tag
                if tag == EPOCH_TAG:
                    run.steps[event.step] = int(tensor_util.make_ndarray(value.tensor))
                elif tag == THRESHOLDS_TAG:
                    run.thresholds = tensor_util.make_ndarray(value.tensor).astype(np.float64)
                elif tag.startswith(FROZEN_PREFIX):
                    mask = tensor_util.make_ndarray(value.tensor) > 0
                    run.frozen.setdefault(tag[len(FROZEN_PREFIX):], {})[event.step] = mask
                elif tag.startswith(ACTIVITY_PREFIX):
                    rows = tensor_util.make_ndarray(value.tensor)
                    run.activity.setdefault(tag[len(ACTIVITY_PREFIX):], {})[event.step] = rows
                elif tag.startswith(WRT_PREFIX):
                    run.steps.setdefault(event.step, None)
                    wrt, _, key = tag[len(WRT_PREFIX):].partition("/")
                    vector = tensor_util.make_ndarray(value.tensor)
                    run.values.setdefault(wrt, {}).setdefault(key, {})[event.step] = vector
    return run


def _read_events(path):
    """The events of one file, read by the TFRecord framing `_record` writes
    (TensorBoard's own loader imports TensorFlow, which a JAX or PyTorch
    user's process must not). A record cut short, or whose checksum fails
    (a file cut by a kill or a full disk), ends the file, as TensorBoard's
    loader stops there."""
    with open(path, "rb") as file:
        data = file.read()
    at = 0
    while at + 12 <= len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        end = at + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        body = data[at + 12 : at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        if body_crc != masked_crc32c(body):
            return
        yield event_pb2.Event.FromString(body)
        at = end
