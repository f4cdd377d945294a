"""The model's graph replayed call by call, and the contexts every pass runs in.

Both methods (the exact sweep and the estimator) and `neuron_jacobian` replay
the graph that `probe.build_graph` recorded, up to the last selected layer,
in inference mode, under the same two contexts: float32 compute for mixed
precision, and the primary copy of mirrored variables under `tf.distribute`.
"""

import contextlib
import copy
import math
import threading

import keras
from keras import ops

from keras_neuron_sensitivity.engine import backend
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

    def run(self, inputs, values=None, calls=None, replace=None):
        """`{tensor id: value}` for every tensor of the replayed calls.

        Args:
            inputs: one tensor per `graph.inputs` entry, batch first.
            values: tensors already computed, `{tensor id: value}`: the calls
                that produced them are not replayed again.
            calls: replay only these calls (in graph order). Defaults to all.
            replace: `{id(call): fn}`: `fn(inputs)` computes that call's
                outputs (a list) instead of the layer, or None.
        """
        values = {**dict(zip(self.graph.inputs, inputs)), **(values or {})}
        for call in self.calls if calls is None else calls:
            if all(t in values for t in call.outputs):
                continue
            ins = [values[t] for t in call.inputs]
            if replace and id(call) in replace:
                outs = replace[id(call)](ins)
            else:
                outs = Site(call, ins).run(ins)
            values.update(zip(call.outputs, outs))
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


class Variables:
    """The variables a computation's calls read, passed to its compiled
    functions as values.

    Weights enter every compiled function as arguments, read inside through
    a `keras.StatelessScope` (as Keras's own `stateless_call` does): a
    function is traced once per probe shape and computes on whatever values
    it is given (the model's now, or a snapshot taken at an epoch's end for
    the background), and JAX's compiler never bakes a weight in.

    Args:
        calls: the replayed calls.
        read: other calls whose variables the computation only reads (the
            consumers whose kernels give the activity's outgoing masses):
            their variables are state here, never differentiated.

    Attributes:
        trainable: the trainable weights (`Call.weights`), each once.
        state: every other variable of the calls' layers (moving
            statistics, frozen weights, random seeds' states).
        stateless: False for `tf_keras` layers, whose variables no scope can
            replace: they are read as they are.
    """

    def __init__(self, calls, read=()):
        seen, trainable, state = set(), [], []
        for call in calls:
            for v in call.weights:
                if id(v) not in seen:
                    seen.add(id(v))
                    trainable.append(v)
        for call in [*calls, *read]:
            for v in getattr(call.layer, "variables", ()):
                if id(v) not in seen:
                    seen.add(id(v))
                    state.append(v)
        self.trainable, self.state = trainable, state
        self.stateless = all(isinstance(v, keras.Variable) for v in trainable + state)

    @property
    def all(self):
        return self.trainable + self.state

    def values(self, snapshot=None):
        """The values to pass: from `snapshot` (`{id(variable): value}`,
        `snapshot_values`), else read now; `[]` for `tf_keras` layers."""
        if not self.stateless:
            return []
        if snapshot is not None:
            return [snapshot[id(v)] for v in self.all]
        return [backend.snapshot(v) for v in self.all]

    @contextlib.contextmanager
    def scope(self, values):
        """Inside, the variables read `values` (a list from `values`)."""
        if not values:
            yield
            return
        with keras.StatelessScope(state_mapping=list(zip(self.all, values))):
            yield


def snapshot_values(calls):
    """`{id(variable): value}` of every variable `calls` read, copied now:
    what a computation in the background reads while training goes on."""
    variables = Variables(calls)
    return {id(v): value for v, value in zip(variables.all, variables.values())}


@contextlib.contextmanager
def snapshot_scope(calls, snapshot):
    """Inside, every variable `calls` read reads its value in `snapshot`
    (`snapshot_values`), or its own value for a snapshot of None: a
    computation in the background reads nothing that training changes (on
    JAX, Keras's trainer even empties the variables during an epoch)."""
    if snapshot is None:
        yield
        return
    variables = Variables(calls)
    mapping = [(v, snapshot[id(v)]) for v in variables.all if id(v) in snapshot]
    with keras.StatelessScope(state_mapping=mapping):
        yield


def neuron_values(y):
    """`(n, ..., C)` -> `(n, C)`: each channel averaged over positions."""
    if len(y.shape) == 2:
        return y
    return ops.mean(ops.reshape(y, (-1, math.prod(backend.shape(y)[1:-1]), y.shape[-1])), axis=1)


_IN_ENGINE = threading.local()  # .depth: float32_compute blocks entered here
_SWAPPED = {}  # id(layer) -> [entrants, the layer's own policy]
_SWAP_LOCK = threading.Lock()


@contextlib.contextmanager
def float32_compute(layers):
    """Layers under a float16/bfloat16 policy compute in float32 meanwhile,
    in this thread only.

    Mixed precision keeps float32 weights; computing from them in float32
    gives the model's own derivatives without float16 round-off. A training
    loop running in another thread (the callback computes in the
    background) must not see it: each such layer's policy is swapped for one
    of a subclass of its own class that answers `float32` as compute dtype
    only in a thread inside this block, and its own dtype elsewhere (and
    serializes as the original). The policies are restored when the last
    thread leaves.
    """
    subs = []
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer):
            continue  # a plain Keras op computes in its inputs' dtype
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            policy = sub._dtype_policy
            own = _SWAPPED.get(id(sub), [0, policy])[1]
            if isinstance(own, keras.DTypePolicy) and own.compute_dtype in ("float16", "bfloat16"):
                subs.append(sub)
    with _SWAP_LOCK:
        for sub in subs:
            entry = _SWAPPED.setdefault(id(sub), [0, sub._dtype_policy])
            if entry[0] == 0:
                sub._dtype_policy = _float32_in_engine(entry[1])
            entry[0] += 1
    depth = getattr(_IN_ENGINE, "depth", 0)
    _IN_ENGINE.depth = depth + 1
    try:
        yield
    finally:
        _IN_ENGINE.depth = depth
        with _SWAP_LOCK:
            for sub in reversed(subs):
                entry = _SWAPPED[id(sub)]
                entry[0] -= 1
                if entry[0] == 0:
                    sub._dtype_policy = entry[1]
                    del _SWAPPED[id(sub)]


def _float32_in_engine(policy):
    """A copy of `policy` whose compute dtype is float32 in threads inside
    `float32_compute`, its own elsewhere."""
    own = type(policy)

    def compute_dtype(self):
        if getattr(_IN_ENGINE, "depth", 0):
            return "float32"
        return own.compute_dtype.fget(self)

    local = type(own.__name__, (own,), {"compute_dtype": property(compute_dtype)})
    local.__qualname__, local.__module__ = own.__qualname__, own.__module__
    swapped = copy.copy(policy)
    swapped.__class__ = local
    return swapped


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
    if backend.name() != "tensorflow":
        yield
        return
    import tensorflow as tf
    from tensorflow.python.saved_model import save_context, save_options

    if not tf.distribute.has_strategy() or save_context.in_save_context():
        yield
        return
    options = save_options.SaveOptions(
        experimental_variable_policy=save_options.VariablePolicy.NONE
    )
    with save_context.save_context(options):
        yield
