"""Writing sensitivities to TensorBoard, and reading them back.

Layout (the README repeats it): run `{log_dir}/sensitivity`; per layer key and
`wrt` in ("weights", "inputs"):

- histogram `sensitivity_to_{wrt}/{key}`: one value per neuron;
- scalar `mean_sensitivity_to_{wrt}/{key}`: the mean over neurons;
- scalar `dead_fraction_to_{wrt}/{key}`: the fraction of dead neurons;
- scalar `nonfinite_count_to_{wrt}/{key}`: neurons whose value is NaN or
  infinite (a diverging run); they are left out of the histogram and mean;
- tensor `per_neuron_to_{wrt}/{key}`: the per-neuron vector itself, exact;
- image `heatmap_to_{wrt}/{key}`: every neuron (rows) over the logged epochs
  (columns) on a log colour scale, dead neurons magenta; drawn after 1, 2,
  4, 8, ... logged epochs and at the end of training;

and one text summary `dead_neurons`: a table of layers with their dead
neurons' indices. Step is the 0-based epoch index, as
`keras.callbacks.TensorBoard` uses.
"""

import os

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

RUN_NAME = "sensitivity"
PLUGIN_NAME = "keras_neuron_sensitivity"
WRT_PREFIX = "per_neuron_to_"
TEXT_TAG = "dead_neurons"
HEATMAP_DESCRIPTION = (
    "Rows: the layer's neurons, 0 at the top. Columns: the logged epochs, "
    "oldest on the left. Colour: log10 of the sensitivity, from the image's "
    "smallest non-zero value (dark purple) to its largest (yellow); the strip "
    "at the bottom is that scale, and the `dead_neurons` text gives the "
    "numbers. Magenta: dead (exactly zero). Grey: NaN or infinite."
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


def heatmap_tag(wrt, key):
    return f"heatmap_to_{wrt}/{key}"


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


def _colour(t):
    """Colours for `t` in [0, 1]."""
    position = np.clip(t, 0, 1) * (len(_COLOURS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_COLOURS) - 2)
    frac = (position - low)[..., None]
    return _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac


def heatmap(columns):
    """`(H, W, 3)` uint8: neurons (rows) by logged epochs (columns).

    Args:
        columns: one `(C,)` per-neuron vector per logged epoch, oldest first.
    """
    matrix = np.stack([np.asarray(c, np.float64) for c in columns], axis=1)
    finite = np.isfinite(matrix)
    positive = finite & (matrix > 0)
    image = np.zeros(matrix.shape + (3,))
    if positive.any():
        logs = np.log10(np.where(positive, matrix, 1.0))
        low, high = logs[positive].min(), logs[positive].max()
        image[positive] = _colour((logs[positive] - low) / ((high - low) or 1.0))
    image[finite & (matrix == 0)] = _DEAD
    image[~finite] = _NONFINITE
    neurons, epochs = matrix.shape
    cell_height = int(np.clip(192 // neurons, 1, 8))
    cell_width = int(np.clip(256 // epochs, 1, 16))
    image = np.repeat(np.repeat(image, cell_height, 0), cell_width, 1)
    width = image.shape[1]
    gap = np.full((2, width, 3), 255.0)
    scale = np.repeat(_colour(np.linspace(0, 1, width))[None], 6, axis=0)
    return np.concatenate([image, gap, scale]).astype(np.uint8)


def _dead_table(step, reduced, dead):
    lines = [
        f"Epoch {step}: dead neurons (sensitivity exactly zero on every probe sample).",
        "",
        "| layer | to | neurons | dead | dead neuron indices | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for wrt, per_layer in reduced.items():
        for key, vector in per_layer.items():
            indices = np.flatnonzero(dead[wrt][key])
            shown = ", ".join(str(i) for i in indices[:32])
            if len(indices) > 32:
                shown += f", ... ({len(indices) - 32} more)"
            finite = vector[np.isfinite(vector)]
            low, high = (f"{finite.min():.3g}", f"{finite.max():.3g}") if finite.size else ("-", "-")
            lines.append(
                f"| {key} | {wrt} | {vector.size} | {len(indices)} | {shown or '-'} | {low} | {high} |"
            )
    return "\n".join(lines)


_HISTOGRAM, _SCALAR, _VALUES, _IMAGE, _TEXT = "histogram", "scalar", "values", "image", "text"
_METADATA = {
    _HISTOGRAM: histogram_metadata.create_summary_metadata(None, None),
    _SCALAR: scalar_metadata.create_summary_metadata(None, None),
    _VALUES: summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME)
    ),
    _IMAGE: image_metadata.create_summary_metadata(None, HEATMAP_DESCRIPTION),
    _TEXT: text_metadata.create_summary_metadata(None, None),
}
_DTYPES = {
    _HISTOGRAM: tf.float64,
    _SCALAR: tf.float32,
    _VALUES: tf.float32,
    _IMAGE: tf.string,
    _TEXT: tf.string,
}


class SensitivityWriter:
    """The `sensitivity` run's writer: created on first use, flushed per epoch.

    Args:
        log_dir: the directory shared with `keras.callbacks.TensorBoard`.
        num_bins: histogram buckets.
    """

    def __init__(self, log_dir, num_bins):
        self.run_dir = os.path.join(os.fspath(log_dir), RUN_NAME)
        self.num_bins = num_bins
        self._writer = None
        self._write_all = {}  # tags -> compiled writer of those tags
        self._history = None  # {wrt: {key: {step: vector}}}, disk included
        self._logged = 0  # epochs logged by this writer
        self._last_written = self._heatmap_step = None

    def history(self):
        """What the run holds: `{wrt: {key: {step: vector}}}`, disk included.

        Lets a new callback (or a new `fit` with the same one) continue the
        run, and its heat maps, instead of starting them again.
        """
        if self._history is None:
            self._history = read_run(self.run_dir)
        return self._history

    def last_step(self):
        """The largest step already in the run, or None."""
        steps = [
            step
            for per_layer in self.history().values()
            for per_step in per_layer.values()
            for step in per_step
        ]
        return max(steps, default=None)

    def write(self, step, reduced, dead):
        """Writes one epoch and flushes it.

        Args:
            step: the epoch index.
            reduced: `{wrt: {key: (C,) per-neuron sensitivity}}`.
            dead: `{wrt: {key: (C,) bool}}`.
        """
        history = self.history()
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.run_dir)
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
        entries.append((TEXT_TAG, _TEXT, _dead_table(step, reduced, dead)))
        self._logged += 1
        # Each heat map holds the whole history, so drawing one every epoch
        # would be wasted work (it costs more than the sweep on small models):
        # after 1, 2, 4, 8, ... logged epochs, and when training ends.
        if self._logged & (self._logged - 1) == 0:
            entries += self._heatmap_entries(step)
        self._emit(step, entries)

    def finish(self):
        """Draws the heat maps at the last logged step, if not drawn yet."""
        if self._last_written is not None and self._heatmap_step != self._last_written:
            self._emit(self._last_written, self._heatmap_entries(self._last_written))

    def _heatmap_entries(self, step):
        self._heatmap_step = step
        entries = []
        for wrt, per_layer in self.history().items():
            for key, per_step in per_layer.items():
                if step not in per_step:
                    continue
                shape = per_step[step].shape
                columns = [per_step[s] for s in sorted(per_step) if s <= step and per_step[s].shape == shape]
                image = heatmap(columns)
                entries.append((heatmap_tag(wrt, key), _IMAGE, [
                    str(image.shape[1]).encode(),
                    str(image.shape[0]).encode(),
                    tf.io.encode_png(image).numpy(),
                ]))
        return entries

    def _emit(self, step, entries):
        # Heat maps are rare: written eagerly, they cost no extra trace.
        images = [e for e in entries if e[1] == _IMAGE]
        entries = [e for e in entries if e[1] != _IMAGE]
        with self._writer.as_default():
            for tag, kind, value in images:
                tf.summary.write(tag, tf.constant(value, tf.string), step=step, metadata=_METADATA[kind])
        if entries:
            self._emit_compiled(step, entries)
        self._writer.flush()
        self._last_written = step

    def _emit_compiled(self, step, entries):
        tags = tuple((tag, kind) for tag, kind, _ in entries)
        if tags not in self._write_all:
            self._write_all[tags] = tf.function(
                lambda step, tensors: _write_tensors(tags, step, tensors),
                autograph=False,
            )
        # One compiled call for all summaries: an eager summary op costs about
        # a millisecond, more than the sweep itself on small models.
        tensors = [tf.constant(value, _DTYPES[kind]) for _, kind, value in entries]
        with self._writer.as_default():
            self._write_all[tags](tf.constant(step, tf.int64), tensors)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            # The compiled writers captured the closed writer's resource.
            self._write_all = {}


def _write_tensors(tags, step, tensors):
    for (tag, kind), tensor in zip(tags, tensors):
        tf.summary.write(tag, tensor, step=step, metadata=_METADATA[kind])


def read_run(run_dir):
    """The per-neuron vectors of a run: `{wrt: {key: {step: (C,) array}}}`."""
    result = {}
    if not os.path.isdir(run_dir):
        return result
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." not in name:
            continue
        for event in _read_events(os.path.join(run_dir, name)):
            for value in event.summary.value:
                if not value.tag.startswith(WRT_PREFIX):
                    continue
                wrt, _, key = value.tag[len(WRT_PREFIX):].partition("/")
                vector = tensor_util.make_ndarray(value.tensor)
                result.setdefault(wrt, {}).setdefault(key, {})[event.step] = vector
    return result


def _read_events(path):
    try:
        yield from event_file_loader.EventFileLoader(path).Load()
    except tf.errors.DataLossError:  # a file cut short by a killed run
        return
