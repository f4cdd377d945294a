"""Exact per-neuron Jacobian norms for Keras models, logged to TensorBoard.

The public surface is re-exported here; everything else is private. Names
are imported on first use, so `python -m keras_neuron_sensitivity` can answer
a bad path before TensorFlow loads.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Channelwise": "keras_neuron_sensitivity.engine",
    "NeuronSensitivityCallback": "keras_neuron_sensitivity.callback",
    "Rule": "keras_neuron_sensitivity.engine",
    "Site": "keras_neuron_sensitivity.engine",
    "UnsupportedLayerError": "keras_neuron_sensitivity.errors",
    "UnsupportedModelError": "keras_neuron_sensitivity.errors",
    "clear_cache": "keras_neuron_sensitivity.api",
    "load_sensitivity": "keras_neuron_sensitivity.report",
    "neuron_activity": "keras_neuron_sensitivity.api",
    "neuron_jacobian": "keras_neuron_sensitivity.api",
    "neuron_sensitivity": "keras_neuron_sensitivity.api",
    "register_rule": "keras_neuron_sensitivity.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_neuron_sensitivity' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
