"""Neuron health: each neuron's status from its activity and sensitivity.

The statistics come from the probe forward (`engine/activity.py`); here
they meet the sensitivities, which say which neurons are dead and which
have nothing trainable upstream. NumPy only: the TensorBoard layout and the
dashboard read `STATUSES` without loading TensorFlow.
"""

import numpy as np

# A neuron's status; the index of each is the code the TensorBoard run stores.
STATUSES = ("frozen", "dead", "dormant", "saturated", "active")
DEFAULT_DORMANT_THRESHOLD = 0.1
DEFAULT_SATURATION_THRESHOLD = 0.01


def neuron_status(statistics, dead, frozen, dormant_threshold, saturation_threshold):
    """`(C,)` status names (`STATUSES`) of one site's neurons.

    Each neuron gets the first that applies:

    - `"frozen"`: nothing trainable upstream (`Sensitivities.frozen`);
    - `"saturated"`: it fires, far from zero (tau-score above
      `dormant_threshold`), and its activation's mean relative derivative
      over the entries where it fires (`slope`) is at most
      `saturation_threshold`. Before dead: a ReLU6 capped at 6 on every
      sample has sensitivity exactly zero, but it is stuck on, not off;
    - `"dead"`: sensitivity exactly zero on every probe sample;
    - `"dormant"`: `tau_score <= dormant_threshold`;
    - `"active"`: none of these.

    Args:
        statistics: `{statistic: (C,)}` (`activity.summarize`).
        dead, frozen: `(C,)` bool, or None (none).
        dormant_threshold: tau.
        saturation_threshold: the largest `slope` called saturated.
    """
    channels = len(statistics["tau_score"])
    none = np.zeros(channels, bool)
    frozen = none if frozen is None else np.asarray(frozen, bool)
    dead = none if dead is None else np.asarray(dead, bool)
    with np.errstate(invalid="ignore"):
        dormant = statistics["tau_score"] <= dormant_threshold
        saturated = (
            (statistics["firing_rate"] > 0)
            & (statistics["slope"] <= saturation_threshold)
            & (statistics["tau_score"] > dormant_threshold)
        )
    # The first that applies wins.
    precedence = ("frozen", "saturated", "dead", "dormant")
    codes = np.select(
        [frozen, saturated, dead, dormant],
        [STATUSES.index(name) for name in precedence],
        STATUSES.index("active"),
    )
    return np.asarray(STATUSES)[codes]


class NeuronActivity(dict):
    """`{layer_key: {statistic: np.ndarray (C,)}}`: each neuron's activity
    on the probe batch, and its status.

    Per site, a dict of arrays, one value per neuron (a pandas `DataFrame`
    takes it as it is): `mean`, `mean_abs`, `std`, `firing_rate`,
    `tau_score`, `utility`, `slope` (see docs/definitions.md, section "Neuron health") and
    `status` (strings from `STATUSES`).

    Attributes:
        dormant_threshold: the tau below which (inclusive) a neuron is
            dormant.
        saturation_threshold: the largest `slope` called saturated.
    """

    def __init__(self, values, dormant_threshold, saturation_threshold):
        super().__init__(values)
        self.dormant_threshold = dormant_threshold
        self.saturation_threshold = saturation_threshold

    @classmethod
    def build(cls, statistics, sensitivities, dormant_threshold, saturation_threshold):
        """The activity with statuses, from `{key: {statistic: (C,)}}` and
        the `Sensitivities` whose zeros say which neurons are dead (None:
        none known dead) and which have nothing trainable upstream."""
        dead = sensitivities.dead() if sensitivities is not None else {}
        frozen = sensitivities.frozen if sensitivities is not None else {}
        values = {}
        for key, stats in statistics.items():
            status = neuron_status(
                stats, dead.get(key), frozen.get(key), dormant_threshold, saturation_threshold
            )
            values[key] = {**stats, "status": status}
        return cls(values, dormant_threshold, saturation_threshold)

    def counts(self, status):
        """`{layer_key: int}`: how many neurons of each site have `status`."""
        return {key: int(np.sum(v["status"] == status)) for key, v in self.items()}

    def __repr__(self):
        return f"NeuronActivity(dormant_threshold={self.dormant_threshold!r}, {dict.__repr__(self)})"
