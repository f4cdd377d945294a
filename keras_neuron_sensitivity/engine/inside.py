"""Reading the sites inside a call at every computation.

A call that holds selected sites inside it (the feed-forward units of a
transformer block, say; `probe/inside.py` finds them) exposes them as extra
outputs: its layer's own `call` runs as it is, while this thread's layer
calls are intercepted (`recording.py`) and the tensors read at their paths.
A path is the list of `(name, occurrence)` of the nested calls from the
called layer down (a layer called twice inside its parent is `name`, then
`name@1`).
"""

import contextlib
import dataclasses
import math

import keras
from keras.src.backend import get_keras_mask, set_keras_mask

from keras_neuron_sensitivity.engine import recording

# Layers whose sub-layer calls are not sites: a recurrent layer calls its
# cell once per step, a wrapper its wrapped layer on reshaped slices.
_CLOSED = (keras.layers.RNN, keras.layers.Wrapper)


@dataclasses.dataclass(frozen=True)
class Inside:
    """Where a site is read inside one call of a layer.

    Attributes:
        path: `((name, occurrence), ...)` of the nested call, from the called
            layer down; `()` is the called layer itself.
        which: `"output"` (its first output) or `"input"` (its first tensor
            argument).
        axes: trailing axes that are neurons, flattened in order (2 for
            heads x head_dim).
    """

    path: tuple = ()
    which: str = "output"
    axes: int = 1


def view(x, axes):
    """`x` with its trailing `axes` axes flattened into one neuron axis."""
    if axes == 1:
        return x
    shape = tuple(x.shape)
    return keras.ops.reshape(x, (-1, *shape[1:-axes], math.prod(shape[-axes:])))


def _owns_weights(layer):
    return bool(layer._trainable_variables or layer._non_trainable_variables)


def is_owner(layer):
    """Whether a call of `layer` inside a block has its weight term from its
    own rule (with every weight below it): it holds weights of its own, or
    it is a recurrent layer or a wrapper with weights (whose sub-layer calls
    are not followed)."""
    return isinstance(layer, keras.layers.Layer) and (
        _owns_weights(layer) or (isinstance(layer, _CLOSED) and bool(layer.weights))
    )


@dataclasses.dataclass(eq=False)
class _Record:
    path: tuple
    layer: object
    input: object = None  # first tensor argument
    output: object = None  # first output
    children: list = dataclasses.field(default_factory=list)
    counts: dict = dataclasses.field(default_factory=dict)


def _first_tensor(structure):
    for x in keras.tree.flatten(structure):
        if keras.ops.is_tensor(x):
            return x
    return None


def _child_path(parent, layer):
    occurrence = parent.counts.get(layer.name, 0)
    parent.counts[layer.name] = occurrence + 1
    return parent.path + ((layer.name, occurrence),)


def path_key(path):
    return "/".join(name if count == 0 else f"{name}@{count}" for name, count in path)


# --- reading sites at every computation -------------------------------------


class Exposed:
    """What one call exposed: `values` (one per `Inside`, flattened to its
    neurons), and, when asked, the calls of the layers with weights of their
    own below it (`owners`: `(path, layer, args, kwargs, outputs)`)."""

    def __init__(self, count):
        self.values = [None] * count
        self.owners = []


@contextlib.contextmanager
def exposing(layer, specs, taps=None, owners=False):
    """While active, this thread's next call of `layer` exposes `specs`.

    Args:
        layer: the called layer.
        specs: `Inside` per tensor to expose.
        taps: `{path: [tensor or None per flat output]}`: added to the
            outputs of the nested call at `path` (zeros, to read the
            cotangent there as their gradient), or None.
        owners: whether to record the calls of the layers with weights of
            their own (the called layer itself if it has them).

    Yields:
        An `Exposed`, filled when the call returns.
    """
    exposed = Exposed(len(specs))
    wanted = {}
    for index, spec in enumerate(specs):
        wanted.setdefault(spec.path, []).append((index, spec))
    taps = taps or {}
    stack = []

    def handle(called, a, k, proceed):
        if stack and (is_owner(stack[-1].layer) or isinstance(stack[-1].layer, _CLOSED)):
            with recording.passing_through():
                return proceed(a, k)
        if not stack:
            if called is not layer:
                with recording.passing_through():
                    return proceed(a, k)
            record = _Record((), called)
        else:
            record = _Record(_child_path(stack[-1], called), called)
        for index, spec in wanted.get(record.path, ()):
            if spec.which == "input":
                exposed.values[index] = view(_first_tensor((a, k)), spec.axes)
        stack.append(record)
        try:
            out = proceed(a, k)
        finally:
            stack.pop()
        if record.path in taps:
            out = _tapped(out, taps[record.path])
        for index, spec in wanted.get(record.path, ()):
            if spec.which == "output":
                exposed.values[index] = view(_first_tensor(out), spec.axes)
        if owners and is_owner(called):
            exposed.owners.append((record.path, called, a, k, out))
        return out

    with recording.intercept(handle):
        yield exposed


def _tapped(out, taps):
    """`out` with `taps` added to its flat outputs (Keras masks kept)."""
    flat = keras.tree.flatten(out)
    moved = []
    for y, tap in zip(flat, taps):
        if tap is None:
            moved.append(y)
            continue
        z = y + tap
        mask = get_keras_mask(y)
        if mask is not None:
            set_keras_mask(z, mask)
        moved.append(z)
    return keras.tree.pack_sequence_as(out, moved)
