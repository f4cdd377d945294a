"""Subclassed models: their graph, recorded from one call on one sample.

Keras records no graph for a `keras.Model` subclass with its own `call`. To
replay one, the model is called once, in inference mode, on one probe
sample, while this thread's layer calls are intercepted (`recording.py`) to
record every layer the model's `call` invokes directly: the layer, its arguments (tensors
replaced by placeholders) and its outputs. That is exact only if every
tensor a layer receives is a model input or another recorded layer's
output; any other computation between layers (`x * 2`, `tf.concat`) would
be lost, so it is refused with an error that says where.
"""

import keras

from keras_neuron_sensitivity.errors import UnsupportedModelError
from keras_neuron_sensitivity.engine import recording
from keras_neuron_sensitivity.engine.site import Placeholder, RecordedArguments


def record_calls(model, inputs):
    """Calls `model` on `inputs`; returns `[(layer, args, kwargs, outputs)]`.

    Only calls made directly by the model's own `call` are kept (a layer's
    own sub-layers are part of that layer). Only this thread's calls are
    seen (`recording.intercept`).
    """
    calls = []
    depth = [0]

    def record(layer, args, kwargs, proceed):
        depth[0] += 1
        try:
            outputs = proceed(args, kwargs)
        finally:
            depth[0] -= 1
        if depth[0] == 1:  # called from inside the model's own call
            calls.append((layer, args, kwargs, outputs))
        return outputs

    with recording.intercept(record):
        structure = inputs[0] if len(inputs) == 1 else list(inputs)
        output = model(structure, training=False)
    return calls, output


def recorded_graph(model, inputs, new_id):
    """Turns a recording into `(input_ids, calls)` for `probe.Call`.

    Args:
        model: the subclassed model.
        inputs: one eager tensor per model input, one sample each.
        new_id: a function returning a fresh tensor id (given the tensor,
            it also records its dtype).

    Returns:
        `(input_ids, [(layer, input_ids, output_ids, arguments, keras_ids)])`.

    Raises:
        UnsupportedModelError: when the model computes anything between its
            layers, or outside of layers, that a replay would miss.
    """
    calls, output = record_calls(model, inputs)
    ids = {id(t): new_id(t) for t in inputs}
    input_ids = [ids[id(t)] for t in inputs]
    recorded = []
    for layer, args, kwargs, outputs in calls:
        keras_ids, call_inputs = {}, []

        def replace(x):
            if not keras.ops.is_tensor(x):
                return x
            if id(x) not in ids:
                raise UnsupportedModelError(
                    f"The subclassed model {model.name!r} passes layer "
                    f"{layer.name!r} a tensor that is neither a model input "
                    "nor the output of one of its layers: its `call` computes "
                    "something between layers (an op such as `x * 2` or "
                    "`tf.concat`), which cannot be replayed exactly. Expected "
                    "a `call` that only chains layers. To fix it, wrap that "
                    "computation in a layer (`keras.layers.Lambda`, or the "
                    "matching Keras layer such as `Concatenate`), or rebuild "
                    "the model as a functional model."
                )
            placeholder = Placeholder()
            keras_ids[id(placeholder)] = ids[id(x)]
            call_inputs.append(ids[id(x)])
            return placeholder

        filled_args = keras.tree.map_structure(replace, args)
        filled_kwargs = keras.tree.map_structure(replace, kwargs)
        output_ids = []
        for t in keras.tree.flatten(outputs):
            ids[id(t)] = new_id(t)
            output_ids.append(ids[id(t)])
        arguments = RecordedArguments(filled_args, filled_kwargs)
        recorded.append((layer, call_inputs, output_ids, arguments, keras_ids))
    for t in keras.tree.flatten(output):
        if id(t) not in ids:
            raise UnsupportedModelError(
                f"The output of the subclassed model {model.name!r} is not the "
                "output of one of its layers: its `call` computes something "
                "after its last layer (or outside layers), which cannot be "
                "replayed exactly. Expected a `call` that only chains layers. "
                "To fix it, wrap that computation in a layer, or rebuild the "
                "model as a functional model."
            )
    return input_ids, recorded
