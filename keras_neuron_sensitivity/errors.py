"""Exceptions raised by keras-neuron-sensitivity.

Each subclasses a built-in exception so `except ValueError` (or
`NotImplementedError`) in user code still catches it.
"""


class UnsupportedLayerError(NotImplementedError):
    """A layer the engine cannot differentiate through."""


class UnsupportedModelError(ValueError):
    """A model whose graph cannot be replayed (for example, not built yet)."""
