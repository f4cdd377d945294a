"""The computation: the exact sweep, the estimator and their per-layer rules.

Written once, on `keras.ops` and `engine/backend` (what `keras.ops` lacks,
per backend). The engine imports nothing above it: `probe/` builds the
graph it replays (`site.Call`), and the rule table (`rules/table.py`) is
filled here, once, from `rules/defaults.py`.
"""

from keras_neuron_sensitivity.engine.rules import defaults as _defaults
from keras_neuron_sensitivity.engine.rules.base import Channelwise, GenericRule, Rule
from keras_neuron_sensitivity.engine.rules.table import register_rule, rule_for
from keras_neuron_sensitivity.engine.site import Site
from keras_neuron_sensitivity.engine.sweep import WRT_CHOICES, Sweep

_defaults.fill()

__all__ = ["Channelwise", "GenericRule", "Rule", "Site", "Sweep", "WRT_CHOICES", "register_rule", "rule_for"]
