"""Exact per-neuron Jacobian norms for Keras models, logged to TensorBoard.

The public surface is re-exported here; everything else is private.
"""

from keras_neuron_sensitivity.api import neuron_jacobian, neuron_sensitivity
from keras_neuron_sensitivity.callback import NeuronSensitivityCallback
from keras_neuron_sensitivity.engine import Rule, register_rule
from keras_neuron_sensitivity.errors import UnsupportedLayerError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "NeuronSensitivityCallback",
    "Rule",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "neuron_jacobian",
    "neuron_sensitivity",
    "register_rule",
]
