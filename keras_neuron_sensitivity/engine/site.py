"""`Call` and `Site`: one call of one layer, as the graph records it and as a
`Rule` sees it in a computation."""

import dataclasses

import keras
from keras.src.backend import get_keras_mask, set_keras_mask

from keras_neuron_sensitivity.engine.inside import exposing


def is_tf_keras(obj):
    """Whether `obj` (a model or layer) comes from `tf_keras` (Keras 2)."""
    return type(obj).__module__.startswith("tf_keras")


def trainable_variables(layer, root=None):
    """The variables of `layer` (sub-layers included) that the optimizer
    trains: those of `root.trainable_weights`, whatever the `trainable` flag
    of the layers that contain them.

    Keras's `layer.trainable_weights` is empty for a layer set
    `trainable=False`, even when a layer inside it was set trainable again
    after (keras_hub's `enable_lora` freezes every layer, then unfreezes the
    LoRA factors of the attention projections); the model's own
    `trainable_weights` filters each variable by its own flag, which
    `layer.trainable = ...` sets on every variable below it.
    """
    if is_tf_keras(layer):
        return list(layer.trainable_weights)
    if not isinstance(layer, keras.layers.Layer):
        return []  # a plain Keras operation
    if root is not None and not getattr(root, "trainable", True):
        return []
    return [v for v in layer.weights if v.trainable]


@dataclasses.dataclass(eq=False)
class Call:
    """One call of one layer: what it reads and writes, by tensor id.

    A call may expose tensors computed inside it (the sites inside a
    transformer block, `inside.py`): `inside` says where each is read, and
    their ids follow the layer's own outputs in `outputs`.
    """

    layer: keras.layers.Layer
    key: str
    inputs: tuple  # tensor ids, in the order of the call's flattened tensors
    outputs: tuple  # tensor ids of the call's flattened outputs, then `inside`'s
    arguments: object = None  # Keras `SymbolicArguments`; None: one positional
    keras_ids: dict = dataclasses.field(default_factory=dict)
    root: object = None  # the model the call belongs to
    inside: tuple = ()  # `inside.Inside` per exposed tensor

    @property
    def weights(self):
        """The weights the optimizer trains that the call reads (none for a
        plain Keras op): see `trainable_variables`."""
        return trainable_variables(self.layer, self.root)

    @property
    def num_layer_outputs(self):
        """How many of `outputs` the layer itself returns (the rest are
        exposed from inside it)."""
        return len(self.outputs) - len(self.inside)

    def fill(self, values):
        """Returns `(args, kwargs)` for this call given `{tensor id: value}`."""
        if self.arguments is None:
            return (values[self.inputs[0]],), {}
        return self.arguments.fill_in(
            {kid: values[tid] for kid, tid in self.keras_ids.items()}
        )


class Placeholder:
    """Stands for a tensor in a recorded (or detached) call's arguments."""


class RecordedArguments:
    """A call's `(args, kwargs)` with `Placeholder`s, filled like Keras's
    `SymbolicArguments` (`Call.fill`)."""

    def __init__(self, args, kwargs):
        self.args = args
        self.kwargs = kwargs

    def fill_in(self, tensor_dict):
        def fill(x):
            return tensor_dict[id(x)] if isinstance(x, Placeholder) else x

        return (
            keras.tree.map_structure(fill, self.args),
            keras.tree.map_structure(fill, self.kwargs),
        )


class Site:
    """One call of one layer, with the tensors it received in this pass.

    Rules (`keras_neuron_sensitivity.Rule`) receive a site in `forward`,
    `backward` and their optional methods (`seed_backward`,
    `channel_backward`, `weight_rows`, `live_neurons`). Everything a rule
    may rely on is here; a rule for your own layer needs nothing else.

    Attributes:
        layer: the `keras.layers.Layer` (or plain Keras operation) called.
        key: the call's layer key, as `neuron_sensitivity` reports it
            (`"dense"`, `"outer/inner"`, `"dense@1"` for a second call).
        inputs: the call's input tensors in this pass, in the order of the
            call's flattened tensor arguments; each is `(n, ...)`, batch first.
        outputs: the call's flattened output tensors, `(n, ...)`; None inside
            `forward` (the rule computes them), set for `backward`. A call
            that exposes sites inside it (`inside`) has those after the
            layer's own outputs.
        inside: where each exposed site is read inside the call
            (`probe.inside.Inside`), in the order of the extra outputs;
            empty for most calls. Calls with sites inside them are served by
            `BlockRule`.
        weights: the trainable variables the call reads (`layer.
            trainable_weights`; empty for a plain Keras operation). The
            weight term a rule returns sums over exactly these.
        need_weights: whether this computation wants the weight term of this
            call, so `forward` should cache what that term needs. False when
            only the sensitivity to inputs is computed, or the call has no
            trainable weights.
    """

    def __init__(self, call, inputs, need_weights=False):
        self._call = call
        self.layer = call.layer
        self.key = call.key
        self.inputs = inputs
        self.outputs = None
        self.weights = call.weights
        self.need_weights = need_weights
        self.inside = call.inside

    def arguments(self, inputs):
        """The call's `(args, kwargs)` with `inputs` in place of its tensors.

        For rules that need to know which tensor is which argument (an
        attention's query, value and mask). Tensors that appear twice in the
        call (`attention(x, x)`) are the same object in both places.
        """
        return self._call.fill(dict(zip(self._call.inputs, inputs)))

    def run(self, inputs):
        """Replays the call on other inputs, in inference mode.

        Args:
            inputs: one tensor per entry of `self.inputs`, with any batch
                size (the rules pass `k * n` rows for `k` cotangents).

        Returns:
            The call's outputs, flattened to a list, then the sites it
            exposes (`inside`).
        """
        if not self.inside:
            return self.call_layer(inputs)
        with exposing(self.layer, self.inside) as exposed:
            outputs = self.call_layer(inputs)
        return outputs + exposed.values

    def call_layer(self, inputs):
        """The layer's own outputs on `inputs`, flattened (inference mode).

        The inputs' Keras masks are as they were after it: some layers clear
        the masks of the tensors they receive (`MultiHeadAttention` does,
        having used them), which the forward pass caches and replays again.
        """
        args, kwargs = self.arguments(inputs)
        if getattr(self.layer, "_call_has_training_arg", False) or getattr(
            self.layer, "_expects_training_arg", False  # tf_keras
        ):
            kwargs = {**kwargs, "training": False}
        masks = [(x, get_keras_mask(x)) for x in inputs if keras.ops.is_tensor(x)]
        try:
            return keras.tree.flatten(self.layer(*args, **kwargs))
        finally:
            for x, mask in masks:
                if mask is not None and get_keras_mask(x) is None:
                    set_keras_mask(x, mask)
