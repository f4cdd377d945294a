"""Writing sensitivities to TensorBoard: one run, tags, histograms, scalars.

Layout (the README repeats it): run `{log_dir}/sensitivity`; per layer key and
`wrt` in ("weights", "inputs"):

- histogram `sensitivity_to_{wrt}/{key}`: one value per neuron;
- scalar `mean_sensitivity_to_{wrt}/{key}`: the mean over neurons;
- scalar `dead_fraction_to_{wrt}/{key}`: the fraction of dead neurons.

Step is the 0-based epoch index, as `keras.callbacks.TensorBoard` uses.
"""

import os

import numpy as np
import tensorflow as tf

RUN_NAME = "sensitivity"


def histogram_tag(wrt, key):
    return f"sensitivity_to_{wrt}/{key}"


def mean_tag(wrt, key):
    return f"mean_sensitivity_to_{wrt}/{key}"


def dead_fraction_tag(wrt, key):
    return f"dead_fraction_to_{wrt}/{key}"


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

    def write(self, step, reduced, dead):
        """Writes one epoch and flushes it.

        Args:
            step: the epoch index.
            reduced: `{wrt: {key: (C,) per-neuron sensitivity}}`.
            dead: `{wrt: {key: (C,) bool}}`.
        """
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.run_dir)
        with self._writer.as_default(step=step):
            for wrt, per_layer in reduced.items():
                for key, values in per_layer.items():
                    values = np.asarray(values, np.float64)
                    tf.summary.histogram(
                        histogram_tag(wrt, key), values, buckets=self.num_bins
                    )
                    tf.summary.scalar(mean_tag(wrt, key), float(values.mean()))
                    tf.summary.scalar(
                        dead_fraction_tag(wrt, key),
                        float(np.mean(dead[wrt][key])),
                    )
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
