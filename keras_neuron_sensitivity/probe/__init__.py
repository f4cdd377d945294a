"""What a neuron is and where it lives: the model's graph, its layer keys,
the sites inside layers, and the recording of layer calls.

- `graph.py`: the model as a flat list of layer calls (`Graph`, `Call`), the
  layer keys and the default selection;
- `inside.py`: the sites inside a layer's `call` (its sub-layers, the
  feed-forward hidden units, the attention heads) and how a call exposes
  them;
- `subclassed.py`: a subclassed model's graph, recorded from one call;
- `recording.py`: seeing the layer calls a call makes, in one thread.
"""

from keras_neuron_sensitivity.probe.graph import (
    ACTIVATION_LAYERS,
    Call,
    Graph,
    ModelInput,
    NeuronSite,
    add_inside_sites,
    build_graph,
    default_selection,
    is_model,
    is_model_built,
    is_tf_keras,
    resolve_layers,
)

__all__ = [
    "ACTIVATION_LAYERS",
    "Call",
    "Graph",
    "ModelInput",
    "NeuronSite",
    "add_inside_sites",
    "build_graph",
    "default_selection",
    "is_model",
    "is_model_built",
    "is_tf_keras",
    "resolve_layers",
]
