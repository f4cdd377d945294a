"""Histogram summaries' buckets, computed as `tf.summary.histogram` does."""

import numpy as np

MEAN_ACTIVATION_DESCRIPTION = (
    "Per neuron, not per entry: each neuron's mean activation over the probe "
    "batch's samples and positions (padded positions left out), one value per "
    "neuron, so the counts sum to the layer's neuron count."
)


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
