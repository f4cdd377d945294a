"""The model's graph replayed call by call, and the contexts every pass runs in.

Both methods (the exact sweep and the estimator) and `neuron_jacobian` replay
the graph that `probe.build_graph` recorded, up to the last selected layer,
in inference mode, under the same two contexts: float32 compute for mixed
precision, and the primary copy of mirrored variables under `tf.distribute`.
"""

import contextlib

import keras
import tensorflow as tf

from keras_neuron_sensitivity.engine.site import Site


class Replay:
    """The calls of `graph` up to the last of `keys`, replayed on a batch.

    Args:
        graph: the model's `probe.Graph`.
        keys: keys of the selected layer calls.
    """

    def __init__(self, graph, keys):
        self.graph = graph
        self.keys = list(keys)
        # The calls holding a selected site inside them expose it as an
        # extra output (`probe.Graph.expose`).
        self.calls, self.target_tensors = graph.expose(self.keys)
        producer = {t: i for i, call in enumerate(self.calls) for t in call.outputs}
        self.targets = [producer[t] for t in self.target_tensors]

    def layers(self):
        return [call.layer for call in self.calls]

    def weights(self):
        """The trainable variables the replayed calls read, each once."""
        seen, variables = set(), []
        for call in self.calls:
            for v in call.weights:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        return variables

    def run(self, inputs, tape=None, values=None, calls=None, replace=None):
        """`{tensor id: value}` for every tensor of the replayed calls.

        Args:
            inputs: one tensor per `graph.inputs` entry, batch first.
            tape: a `tf.GradientTape` that watches every tensor of
                `graph.sensitivity_inputs` as it is computed (embedded inputs
                are outputs of calls), or None.
            values: tensors already computed, `{tensor id: value}`: the calls
                that produced them are not replayed again.
            calls: replay only these calls (in graph order). Defaults to all.
            replace: `{id(call): fn}`: `fn(inputs)` computes that call's
                outputs (a list) instead of the layer, or None.
        """
        values = {**dict(zip(self.graph.inputs, inputs)), **(values or {})}
        watched = self.graph.sensitivity_inputs if tape is not None else {}
        for call in self.calls if calls is None else calls:
            if all(t in values for t in call.outputs):
                continue
            ins = [values[t] for t in call.inputs]
            if replace and id(call) in replace:
                outs = replace[id(call)](ins)
            else:
                outs = Site(call, ins).run(ins)
            values.update(zip(call.outputs, outs))
            for t in watched:
                if t in call.outputs:
                    tape.watch(values[t])
        return values

    def embedding_calls(self):
        """The calls that compute the embedded inputs, with their ancestors.

        An embedded input is the float output of a call fed only integers or
        strings, so these calls depend on no float tensor: replayed first,
        their outputs can be differentiated against like model inputs.
        """
        embedded = set(self.graph.sensitivity_inputs) - set(self.graph.inputs)
        producer = {t: call for call in self.calls for t in call.outputs}
        needed, stack = set(), [producer[t] for t in embedded if t in producer]
        while stack:
            call = stack.pop()
            if id(call) not in needed:
                needed.add(id(call))
                stack.extend(producer[t] for t in call.inputs if t in producer)
        return [call for call in self.calls if id(call) in needed]

    def target_outputs(self, values):
        """The selected sites' tensors, in the order of `keys`."""
        return [values[t] for t in self.target_tensors]


def neuron_values(y):
    """`(n, ..., C)` -> `(n, C)`: each channel averaged over positions."""
    return tf.reduce_mean(tf.reshape(y, [tf.shape(y)[0], -1, y.shape[-1]]), axis=1)


@contextlib.contextmanager
def float32_compute(layers):
    """Layers under a float16/bfloat16 policy compute in float32 meanwhile.

    Mixed precision keeps float32 weights; computing from them in float32
    gives the model's own derivatives without float16 round-off. Only the
    engine's trace and runs see this: the policies are restored on exit.
    """
    changed = []
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer):
            continue  # a plain Keras op computes in its inputs' dtype
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            if sub.compute_dtype in ("float16", "bfloat16"):
                changed.append((sub, sub._dtype_policy))
                sub._dtype_policy = keras.DTypePolicy("float32")
    try:
        yield
    finally:
        for sub, policy in reversed(changed):
            sub._dtype_policy = policy


@contextlib.contextmanager
def primary_variables():
    """Lets the compiled sweep read mirrored variables under `tf.distribute`.

    In a cross-replica context (callbacks of a distributed `fit`) a
    `DistributedVariable` has no handle to capture ("handle is not available
    outside the replica context", tensorflow/tensorflow#36392). TensorFlow's
    own SavedModel export reads the primary copy under a save context with
    `VariablePolicy.NONE`; every replica holds the same values, so the sweep
    does the same.
    """
    from tensorflow.python.saved_model import save_context, save_options

    if not tf.distribute.has_strategy() or save_context.in_save_context():
        yield
        return
    options = save_options.SaveOptions(
        experimental_variable_policy=save_options.VariablePolicy.NONE
    )
    with save_context.save_context(options):
        yield
