"""The computation: the reverse sweep and its per-layer rules."""

from keras_neuron_sensitivity.engine.base import Channelwise, GenericRule, Rule
from keras_neuron_sensitivity.engine.registry import register_rule, rule_for
from keras_neuron_sensitivity.engine.site import Site
from keras_neuron_sensitivity.engine.sweep import WRT_CHOICES, Sweep

__all__ = ["Channelwise", "GenericRule", "Rule", "Site", "Sweep", "WRT_CHOICES", "register_rule", "rule_for"]
