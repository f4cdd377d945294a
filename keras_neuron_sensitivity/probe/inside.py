"""Sites inside a layer's `call`: the neurons of a transformer block.

A keras_hub decoder block is one call in the model's graph, but its `call`
calls layers of its own from Python: norms, the attention (which calls its
query, key, value and output projections), the feed-forward projections.
Each of those calls is a site here, keyed `outer/inner` as a layer of a
nested model is (`transformer_layer_3/self_attention/query`), with the
output's channels as neurons. Two more sites per block carry what the
interpretability literature calls neurons:

- `.../ffn`, the feed-forward hidden units: the input of the feed-forward
  output projection (`act(gate(x)) * up(x)` in a gated block such as Llama's
  or Gemma's, the activated intermediate `Dense` in GPT-2, BERT or ViT);
  TransformerLens's `blocks.{i}.mlp.hook_post`;
- `.../heads`, the attention context: the input of the attention's output
  projection, heads x head_dim channels (neuron `h * head_dim + d`).

They are found by recording one call on one probe sample (`discover`), and
read at every computation by exposing them as extra outputs of the call
(`exposing`): the block's own `call` runs as it is, and only this thread's
layer calls are seen (`recording.py`).

Where the computation is read, by nested call: the path of `(name,
occurrence)` pairs from the called layer down (a layer called twice inside
its parent is `name` then `name@1`).
"""

import dataclasses
import math

import keras

from keras_neuron_sensitivity.engine import recording
from keras_neuron_sensitivity.engine.inside import (
    _CLOSED,
    Inside,
    _child_path,
    _first_tensor,
    _owns_weights,
    _Record,
    is_owner,
    path_key,
)

def neuron_axes(layer):
    """Trailing output axes that are one layer's neurons: those an
    `EinsumDense` kernel adds (`"abc,cde->abde"`: heads x head_dim), else the
    last axis."""
    equation = getattr(layer, "equation", None)
    if not isinstance(layer, keras.layers.EinsumDense) or not equation:
        return 1
    spec = _einsum_spec(equation)
    if spec is None:
        return 1
    _, kernel, output = spec
    added = [c for c in output if c in kernel]
    if len(added) > 1 and output.endswith("".join(added)):
        return len(added)
    return 1


def _einsum_spec(equation):
    """`(input, kernel, output)` letters, or None for another form."""
    try:
        ins, output = equation.replace(" ", "").split("->")
        left, kernel = ins.split(",")
    except ValueError:
        return None
    if "." in equation:
        return None
    return left, kernel, output


def _kernel_input_axes(layer):
    """How many trailing input axes an `EinsumDense` kernel contracts, or 0."""
    spec = _einsum_spec(getattr(layer, "equation", "") or "")
    if spec is None:
        return 0
    left, kernel, output = spec
    contracted = [c for c in left if c in kernel and c not in output]
    if contracted and left.endswith("".join(contracted)):
        return len(contracted)
    return 0


def is_openable(layer):
    """Whether the sites inside `layer`'s calls can be read: a Keras 3 layer
    (not a model: its layers are in the graph already) that calls layers and
    owns no weights itself, so that every weight it reads belongs to a layer
    it calls, whose own rule gives its weight term."""
    return (
        isinstance(layer, keras.layers.Layer)
        and not isinstance(layer, (keras.Model, *_CLOSED))
        and bool(layer._layers)
        and not _owns_weights(layer)
    )


def owned_weights(records):
    """The ids of the weights of the owners among `records` (recorded
    calls), which the weight term of the call that made them covers."""
    return {id(v) for record in records if is_owner(record.layer) for v in record.layer.weights}


# --- discovery --------------------------------------------------------------


def _record(layer, args, kwargs):
    """The root `_Record` of one call of `layer`, with every call below."""
    stack = []
    root = []

    def handle(called, a, k, proceed):
        if stack and (is_owner(stack[-1].layer) or isinstance(stack[-1].layer, _CLOSED)):
            # Below a layer with weights of its own, or inside a recurrent
            # layer or a wrapper: part of that layer.
            with recording.passing_through():
                return proceed(a, k)
        if not stack:
            record = _Record((), called)
            root.append(record)
        else:
            record = _Record(_child_path(stack[-1], called), called)
            stack[-1].children.append(record)
        record.input = _first_tensor((a, k))
        stack.append(record)
        try:
            out = proceed(a, k)
        finally:
            stack.pop()
        record.output = _first_tensor(out)
        return out

    with recording.intercept(handle):
        outputs = layer(*args, **kwargs)
    return root[0], outputs


@dataclasses.dataclass(frozen=True)
class Found:
    """A site inside a call, as `discover` finds it."""

    suffix: str  # the key after the call's key and "/"
    inside: Inside
    layer: object
    kind: str
    heads: int = None
    default: bool = False


def discover(layer, args, kwargs, trains_by_design, is_activation):
    """The sites inside one call of `layer`, on a sample (`args`, `kwargs`).

    Args:
        layer: an openable layer (`is_openable`).
        args, kwargs: a call's arguments, with tensors of one sample.
        trains_by_design: `layer -> bool`, for the default selection.
        is_activation: `layer -> bool`, likewise.

    Returns:
        `([Found], outputs)`: the sites in call order (each nested call, then
        the `ffn` and `heads` sites of each layer that calls layers), and the
        call's outputs. No site where a layer with weights inside is called
        on a tensor without the batch axis (a position embedding of
        `range(length)`): its weight gradient per sample is not the rows'
        own, so the call stays whole.
    """
    root, outputs = _record(layer, args, kwargs)
    batch = int(_first_tensor((args, kwargs)).shape[0])
    if not _batch_first(root, batch) or not _covered(layer, root):
        return [], outputs
    found = []

    def visit(record):
        named = []
        for child in record.children:
            y = child.output
            if _is_site_tensor(y, batch):
                found.append(
                    Found(
                        path_key(child.path),
                        Inside(child.path, "output", neuron_axes(child.layer)),
                        child.layer,
                        "layer",
                        # Not an attention's softmax: its last axis is key
                        # positions, not neurons.
                        default=trains_by_design(child.layer)
                        or (is_activation(child.layer) and not isinstance(child.layer, keras.layers.Softmax)),
                    )
                )
            visit(child)
        named += _feed_forward(record) + _heads(record)
        found.extend(named)

    visit(root)
    return found, outputs


def _covered(layer, root):
    """Whether every weight of `layer` belongs to a layer with weights that
    its call calls (an owner), whose rule gives its weight term. Otherwise
    (a weight read directly by the block's own code, or one of a layer it
    does not call) the call stays whole, served by its own rule."""
    records, pending = [], list(root.children)
    while pending:
        record = pending.pop()
        records.append(record)
        pending.extend(record.children)
    return {id(v) for v in layer.weights} <= owned_weights(records)


def _batch_first(record, batch):
    """Whether every layer with weights below `record` reads and writes
    tensors with the batch axis first."""
    for child in record.children:
        if is_owner(child.layer) and not all(
            t is not None and len(t.shape) >= 1 and t.shape[0] == batch
            for t in (child.input, child.output)
        ):
            return False
        if not _batch_first(child, batch):
            return False
    return True


def _is_site_tensor(y, batch):
    return (
        y is not None
        and len(y.shape) >= 2
        and y.shape[0] == batch
        and keras.backend.standardize_dtype(y.dtype).startswith(("float", "bfloat"))
    )


def _projection(record):
    """`(features in, features out, contracted input axes)` of a `Dense` or
    `EinsumDense` call, or None."""
    layer = record.layer
    if record.input is None or record.output is None:
        return None
    if isinstance(layer, keras.layers.Dense):
        return int(record.input.shape[-1]), int(record.output.shape[-1]), 1
    if isinstance(layer, keras.layers.EinsumDense):
        axes = _kernel_input_axes(layer)
        if not axes:
            return None
        features_in = math.prod(int(d) for d in record.input.shape[-axes:])
        features_out = math.prod(
            int(d) for d in record.output.shape[len(record.output.shape) - neuron_axes(layer):]
        )
        return features_in, features_out, axes
    return None


def _feed_forward(record):
    """The hidden units of the feed-forward blocks among `record`'s calls:
    the input of a projection that narrows (`features in > out`, one input
    axis) what an earlier projection of the same layer widened to exactly
    its input width."""
    out = []
    widened = set()
    for child in record.children:
        shape = _projection(child)
        if shape is None:
            continue
        features_in, features_out, axes = shape
        if axes == 1 and features_in > features_out and features_in in widened:
            out.append(child)
        if features_out > features_in:
            widened.add(features_out)
    names = ["ffn"] + [f"ffn@{i}" for i in range(1, len(out))]
    prefix = path_key(record.path)
    return [
        Found(
            f"{prefix}/{name}" if prefix else name,
            Inside(child.path, "input", 1),
            child.layer,
            "ffn",
            default=True,
        )
        for name, child in zip(names, out)
    ]


def _heads(record):
    """The attention context among `record`'s calls: the input of an output
    projection that contracts its last two axes, heads x head_dim."""
    out = []
    for child in record.children:
        shape = _projection(child)
        if shape is None or shape[2] != 2 or len(child.output.shape) >= len(child.input.shape):
            continue
        out.append(child)
    names = ["heads"] + [f"heads@{i}" for i in range(1, len(out))]
    prefix = path_key(record.path)
    return [
        Found(
            f"{prefix}/{name}" if prefix else name,
            Inside(child.path, "input", 2),
            child.layer,
            "heads",
            heads=int(child.input.shape[-2]),
            default=True,
        )
        for name, child in zip(names, out)
    ]


