"""The model as a flat list of layer calls: graph walk, layer keys, selection.

The engine does not use Keras's own `Functional.call`: it replays the graph
itself so that it can keep every layer's inputs (and pre-activations) from one
forward pass and push neuron cotangents back through it. This module turns a
`Sequential` or `Functional` model, with nested models expanded in place, into
that replayable form.
"""

import dataclasses

import keras

from keras_neuron_sensitivity.errors import UnsupportedModelError

# Standalone activation layers are selected by default even though they own no
# weights: their neurons are what users look at for dead or saturated units.
ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)


@dataclasses.dataclass(eq=False)
class Call:
    """One call of one layer: what it reads and writes, by tensor id."""

    layer: keras.layers.Layer
    key: str
    inputs: tuple  # tensor ids, in the order of the call's flattened tensors
    outputs: tuple  # tensor ids of the call's flattened outputs
    arguments: object = None  # Keras `SymbolicArguments`; None: one positional
    keras_ids: dict = dataclasses.field(default_factory=dict)

    def fill(self, values):
        """Returns `(args, kwargs)` for this call given `{tensor id: value}`."""
        if self.arguments is None:
            return (values[self.inputs[0]],), {}
        return self.arguments.fill_in(
            {kid: values[tid] for kid, tid in self.keras_ids.items()}
        )


@dataclasses.dataclass(eq=False)
class Graph:
    """A model as layer calls in topological order."""

    inputs: list  # tensor ids of the model's inputs, in `model.inputs` order
    input_names: list
    input_dtypes: list
    input_shapes: list
    calls: list

    @property
    def keys(self):
        return [call.key for call in self.calls]

    def call(self, key):
        for call in self.calls:
            if call.key == key:
                return call
        raise KeyError(key)


def is_model_built(model):
    """True once the model's graph (and so its inputs) is known."""
    if isinstance(model, keras.Sequential):
        return model._functional is not None or model.built
    return model.built


def build_graph(model):
    """Returns the `Graph` of a built `Sequential` or `Functional` model.

    Raises:
        UnsupportedModelError: for a model whose graph Keras does not record
            (a subclassed `keras.Model` with its own `call`).
    """
    builder = _Builder()
    inputs = _model_inputs(model)
    ids = [builder.new_id() for _ in inputs]
    builder.add_model(model, ids, prefix="")
    names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(inputs)]
    dtypes = [t.dtype for t in inputs]
    shapes = [tuple(t.shape) for t in inputs]
    return Graph(ids, names, dtypes, shapes, builder.calls)


def default_selection(graph):
    """Keys of layer calls with trainable weights, or standalone activations."""
    return [
        call.key
        for call in graph.calls
        if call.layer.trainable_weights
        or isinstance(call.layer, ACTIVATION_LAYERS)
    ]


def resolve_layers(graph, layers):
    """Keys for the user's `layers` argument (None: the default selection).

    Entries are keys (layer names; `outer/inner` inside a nested model;
    `name@1` for a layer's second call) or layer objects (all their calls).

    Raises:
        ValueError: for an empty list or an entry the model does not have.
    """
    if layers is None:
        keys = default_selection(graph)
        if not keys:
            raise ValueError(
                "The model has no layer with trainable weights and no "
                "activation layer, so there is nothing to evaluate by default. "
                f"Pass `layers=` with some of {graph.keys}."
            )
        return keys
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(
            "Received layers=[] (no layers). Expected None for the default "
            f"selection or a list of layer names from {graph.keys}."
        )
    keys = []
    for entry in layers:
        if isinstance(entry, keras.layers.Layer):
            found = [c.key for c in graph.calls if c.layer is entry]
        else:
            found = [entry] if entry in graph.keys else []
        if not found:
            raise ValueError(
                f"Received a layer {entry if isinstance(entry, str) else entry.name!r} "
                f"that the model does not have. Expected one of {graph.keys}. "
                "Use these names (nested models: 'outer/inner')."
            )
        keys.extend(k for k in found if k not in keys)
    return keys


def _model_inputs(model):
    if isinstance(model, keras.Sequential):
        if model._functional is not None:
            return model._functional.inputs
        raise UnsupportedModelError(
            f"The Sequential model {model.name!r} has no known input shape, so "
            "its layers cannot be replayed. Expected a model that has been "
            "built, for example by `fit`, by calling it once on data, or by "
            "starting it with `keras.Input(shape)`."
        )
    if isinstance(model, keras.Model) and _is_functional(model):
        return model.inputs
    raise UnsupportedModelError(
        f"Received a model of class {type(model).__name__!r}, a subclassed "
        "`keras.Model` whose graph Keras does not record. Expected a "
        "`keras.Sequential` or a functional `keras.Model(inputs, outputs)`. "
        "To fix it, rebuild the same layers as a functional model (the weights "
        "can be copied with `set_weights`)."
    )


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


class _Builder:
    def __init__(self):
        self.calls = []
        self._next_id = 0
        self._calls_per_key = {}

    def new_id(self):
        self._next_id += 1
        return self._next_id - 1

    def add_model(self, model, input_ids, prefix):
        if isinstance(model, keras.Sequential) and model._functional is None:
            # Built without `Input` (or never built): the layers are a chain.
            current = input_ids
            for layer in model.layers:
                current = self._add_layer_or_model(layer, current, prefix, None, {})
            return current
        functional = (
            model._functional if isinstance(model, keras.Sequential) else model
        )
        if not _is_functional(functional):
            _model_inputs(model)  # raises the explanatory error
        tensor_ids = {
            id(t): i for t, i in zip(functional.inputs, input_ids, strict=True)
        }
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if node.operation is None or node.is_input:
                    continue
                inputs = [tensor_ids[id(t)] for t in node.input_tensors]
                single = node.arguments._single_positional_tensor is not None
                keras_ids = {
                    id(t): tensor_ids[id(t)] for t in node.input_tensors
                }
                outputs = self._add_layer_or_model(
                    node.operation,
                    inputs,
                    prefix,
                    None if single else node.arguments,
                    keras_ids,
                    num_outputs=len(node.outputs),
                )
                for t, i in zip(node.outputs, outputs, strict=True):
                    tensor_ids[id(t)] = i
        return [tensor_ids[id(t)] for t in functional.outputs]

    def _add_layer_or_model(
        self, layer, input_ids, prefix, arguments, keras_ids, num_outputs=1
    ):
        if isinstance(layer, keras.Model):
            return self.add_model(layer, input_ids, f"{prefix}{layer.name}/")
        name = prefix + layer.name
        count = self._calls_per_key.get(name, 0)
        self._calls_per_key[name] = count + 1
        # A layer called more than once: each call is its own entry.
        key = name if count == 0 else f"{name}@{count}"
        outputs = tuple(self.new_id() for _ in range(num_outputs))
        self.calls.append(
            Call(layer, key, tuple(input_ids), outputs, arguments, keras_ids)
        )
        return list(outputs)
