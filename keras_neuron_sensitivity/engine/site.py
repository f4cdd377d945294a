"""`Site`: one call of one layer in a computation, as a `Rule` sees it."""

import keras
from keras.src.backend import get_keras_mask, set_keras_mask

from keras_neuron_sensitivity.probe.inside import exposing


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
