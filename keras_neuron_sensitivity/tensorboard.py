"""Writing sensitivities to TensorBoard: one run, tags, histograms, scalars.

Layout (the README repeats it): run `{log_dir}/sensitivity`; per layer key and
`wrt` in ("weights", "inputs"):

- histogram `sensitivity_to_{wrt}/{key}`: one value per neuron;
- scalar `mean_sensitivity_to_{wrt}/{key}`: the mean over neurons;
- scalar `dead_fraction_to_{wrt}/{key}`: the fraction of dead neurons;
- scalar `nonfinite_count_to_{wrt}/{key}`: neurons whose value is NaN or
  infinite (a diverging run); they are left out of the histogram and mean.

Step is the 0-based epoch index, as `keras.callbacks.TensorBoard` uses.
"""

import os

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

RUN_NAME = "sensitivity"


def histogram_tag(wrt, key):
    return f"sensitivity_to_{wrt}/{key}"


def mean_tag(wrt, key):
    return f"mean_sensitivity_to_{wrt}/{key}"


def dead_fraction_tag(wrt, key):
    return f"dead_fraction_to_{wrt}/{key}"


def nonfinite_tag(wrt, key):
    return f"nonfinite_count_to_{wrt}/{key}"


def _read_events(path):
    try:
        yield from event_file_loader.EventFileLoader(path).Load()
    except tf.errors.DataLossError:  # a file cut short by a killed run
        return


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
        self._last_step = None

    def write(self, step, reduced, dead):
        """Writes one epoch and flushes it.

        Args:
            step: the epoch index.
            reduced: `{wrt: {key: (C,) per-neuron sensitivity}}`.
            dead: `{wrt: {key: (C,) bool}}`.
        """
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.run_dir)
        entries = []
        for wrt, per_layer in reduced.items():
            for key, vector in per_layer.items():
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
        tags = tuple((tag, kind) for tag, kind, _ in entries)
        if tags not in self._write_all:
            self._write_all[tags] = tf.function(
                lambda step, tensors: _write_tensors(tags, step, tensors),
                autograph=False,
            )
        # One compiled call for all summaries: an eager summary op costs about
        # a millisecond, more than the sweep itself on small models.
        tensors = [tf.constant(value, tf.float32 if kind is _SCALAR else tf.float64)
                   for _, kind, value in entries]
        with self._writer.as_default():
            self._write_all[tags](tf.constant(step, tf.int64), tensors)
        self._writer.flush()
        self._last_step = step if self._last_step is None else max(self._last_step, step)

    def last_step(self):
        """The largest step already in the run directory, or None.

        Lets a new callback (or a new `fit` with the same one) continue the
        run instead of writing its steps a second time.
        """
        if self._last_step is None and os.path.isdir(self.run_dir):
            steps = [
                event.step
                for name in sorted(os.listdir(self.run_dir))
                if ".tfevents." in name
                for event in _read_events(os.path.join(self.run_dir, name))
                if any(v.tag.startswith("sensitivity_to_") for v in event.summary.value)
            ]
            self._last_step = max(steps, default=None)
        return self._last_step

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            # The compiled writers captured the closed writer's resource.
            self._write_all = {}


_HISTOGRAM, _SCALAR = "histogram", "scalar"
_METADATA = {
    _HISTOGRAM: histogram_metadata.create_summary_metadata(None, None),
    _SCALAR: scalar_metadata.create_summary_metadata(None, None),
}


def _write_tensors(tags, step, tensors):
    for (tag, kind), tensor in zip(tags, tensors):
        tf.summary.write(tag, tensor, step=step, metadata=_METADATA[kind])
