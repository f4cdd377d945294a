"""The computation: the reverse sweep and its per-layer rules."""

from keras_neuron_sensitivity.engine.rules import GenericRule, Rule, register_rule
from keras_neuron_sensitivity.engine.sweep import WRT_CHOICES, Sweep

__all__ = ["GenericRule", "Rule", "Sweep", "WRT_CHOICES", "register_rule"]
