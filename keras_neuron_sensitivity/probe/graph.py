"""The model as a flat list of layer calls: graph walk, layer keys, selection.

The engine does not use Keras's own `Functional.call`: it replays the graph
itself so that it can keep every layer's inputs (and pre-activations) from one
forward pass and push neuron cotangents back through it. This module turns a
`Sequential` or `Functional` model, with nested models expanded in place, into
that replayable form.

Text models start with calls that nothing can be differentiated through:
`TextVectorization`, `StringLookup`, `Hashing` and the like turn strings or
ids into ids. Those calls (the *preprocessing*) are split off here and
replayed once, eagerly, on the probe batch (`_batch.standardize`); the engine
starts after them, on plain integer and float tensors whose shapes the probe
fixes. This module also says where the sensitivity to inputs is measured
(`Graph.sensitivity_inputs`): at the floating-point model inputs, and, for
integer or string inputs, at the output of the call that first turns them into
floats (an `Embedding`, say): the *embedded input*.
"""

import dataclasses

import keras
import numpy as np

from keras_neuron_sensitivity.errors import UnsupportedModelError
from keras_neuron_sensitivity.engine.site import Call, is_tf_keras
from keras_neuron_sensitivity.probe import subclassed as _subclassed

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


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One of the model's own inputs, as the user passes it."""

    id: int  # tensor id
    name: str
    dtype: str
    shape: tuple  # with the batch axis; None where any size is accepted


@dataclasses.dataclass(eq=False)
class Graph:
    """A model as layer calls in topological order.

    The engine replays `calls`, fed with one tensor per entry of `inputs`;
    `_batch.standardize` makes those tensors from the user's batch (one per
    `model_inputs` entry) by replaying `preprocessing` on it. Without
    preprocessing layers, `inputs` are the model's inputs.
    """

    inputs: list  # tensor ids the engine is fed, in this order
    input_names: list  # a name per entry of `inputs`
    input_dtypes: list
    input_shapes: list
    calls: list  # the differentiable part, in topological order
    model_inputs: list = dataclasses.field(default_factory=list)  # ModelInput
    preprocessing: list = dataclasses.field(default_factory=list)  # calls
    # Where the sensitivity to inputs is measured: tensor id -> readable name.
    # The floating-point inputs of `calls`, then the float outputs of the calls
    # that first turn integer (or string) inputs into floats: the embedded
    # inputs. Every method reads the derivative at exactly these tensors.
    sensitivity_inputs: dict = dataclasses.field(default_factory=dict)
    # Non-float model inputs from which no sensitivity input is computed (a
    # padding mask going straight into attention): left out, with a warning.
    left_out_inputs: list = dataclasses.field(default_factory=list)

    # Every set of neurons the model has (`NeuronSite`), in graph order: one
    # per call, and those found inside calls (`inside.discover`).
    sites: list = dataclasses.field(default_factory=list)
    next_id: int = 0  # the first tensor id not in use
    inside_added: bool = False  # whether `add_inside_sites` ran

    @property
    def keys(self):
        return [site.key for site in self.sites]

    def site(self, key):
        for site in self.sites:
            if site.key == key:
                return site
        raise KeyError(key)

    def call(self, key):
        for call in self.calls:
            if call.key == key:
                return call
        raise KeyError(key)

    def new_id(self):
        self.next_id += 1
        return self.next_id - 1

    def expose(self, keys):
        """The calls up to the last of `keys`, exposing what they need.

        Returns:
            `(calls, tensors)`: the calls to replay, in order (those holding a
            selected site inside them, or a flattened view of their output,
            expose it as an extra output: `Call.inside`), and the tensor id
            of each key's neurons.
        """
        keys = tuple(keys)
        if keys not in self._exposed:
            sites = [self.site(key) for key in keys]
            extra = {}
            for site in sites:
                if site.tensor not in site.call.outputs:
                    more = extra.setdefault(id(site.call), [])
                    if site not in more:
                        more.append(site)
            last = max(self.calls.index(site.call) for site in sites)
            calls = []
            for call in self.calls[: last + 1]:
                more = extra.get(id(call))
                if more:
                    call = dataclasses.replace(
                        call,
                        outputs=call.outputs + tuple(s.tensor for s in more),
                        inside=call.inside + tuple(s.inside for s in more),
                    )
                calls.append(call)
            self._exposed[keys] = (calls, [site.tensor for site in sites])
        return self._exposed[keys]

    def __post_init__(self):
        self._exposed = {}
        if not self.sites:
            self.sites = [layer_site(self, call) for call in self.calls]

    def with_calls(self, calls):
        """This graph on other calls, one per call here, in the same order
        (a copy of the layers): sites follow their call's position; a site
        inside a call no longer names its layer object."""
        position = {id(call): i for i, call in enumerate(self.calls)}
        sites = [
            dataclasses.replace(
                site,
                call=calls[position[id(site.call)]],
                layer=calls[position[id(site.call)]].layer
                if site.inside.path == ()
                else None,
            )
            for site in self.sites
        ]
        return dataclasses.replace(self, calls=list(calls), sites=sites)


@dataclasses.dataclass(frozen=True, eq=False)
class NeuronSite:
    """A set of neurons: a tensor whose last axis is the neurons.

    Attributes:
        key: its key (`"dense"`, `"outer/inner"`, `"block/ffn"`).
        call: the graph call that computes it.
        inside: where in that call it is read (`inside.Inside`; the empty
            path is the call's own first output).
        tensor: its tensor id: the call's output, or an extra output that
            the call exposes (`Graph.expose`).
        layer: the layer whose output it is (for `"ffn"` and `"heads"`, the
            projection that reads it).
        kind: `"layer"`, `"ffn"` (feed-forward hidden units) or `"heads"`
            (attention context vectors, heads x head_dim).
        heads: for `"heads"`, the number of heads.
        default: whether the default selection has it.
    """

    key: str
    call: Call
    inside: object
    tensor: int
    layer: object
    kind: str = "layer"
    heads: int = None
    default: bool = False


def layer_site(graph, call):
    """The site of a call's own output: its last axis, or the trailing axes
    an `EinsumDense` kernel adds (a projection to heads x head_dim)."""
    from keras_neuron_sensitivity.probe.inside import Inside, neuron_axes

    axes = neuron_axes(call.layer)
    tensor = call.outputs[0] if axes == 1 else graph.new_id()
    return NeuronSite(
        key=call.key,
        call=call,
        inside=Inside((), "output", axes),
        tensor=tensor,
        layer=call.layer,
        default=trains_by_design(call.layer) or _is_activation_layer(call.layer),
    )


def add_inside_sites(graph, inputs):
    """Adds the sites inside the graph's calls (`inside.py`): every layer
    called inside a layer's `call`, the feed-forward hidden units and the
    attention heads, found by replaying the graph on the first sample.

    Args:
        graph: the model's `Graph` (sites added once).
        inputs: one tensor per `graph.inputs` entry, batch first.
    """
    from keras_neuron_sensitivity.probe import inside

    if graph.inside_added:
        return
    graph.inside_added = True
    if not any(inside.is_openable(call.layer) for call in graph.calls):
        return
    # Two samples (the first one twice for a probe of one): a tensor whose
    # first axis is not 2 has no batch axis.
    values = dict(zip(graph.inputs, [_two_samples(x) for x in inputs]))
    sites = []
    for call, site in zip(graph.calls, graph.sites[: len(graph.calls)]):
        sites.append(site)
        args, kwargs = call.fill(values)
        if getattr(call.layer, "_call_has_training_arg", False):
            kwargs = {**kwargs, "training": False}
        if inside.is_openable(call.layer):
            found, outputs = inside.discover(
                call.layer, args, kwargs, trains_by_design, _is_activation_layer
            )
            sites += [
                NeuronSite(
                    key=f"{call.key}/{f.suffix}",
                    call=call,
                    inside=f.inside,
                    tensor=graph.new_id(),
                    layer=f.layer,
                    kind=f.kind,
                    heads=f.heads,
                    default=f.default,
                )
                for f in found
            ]
        else:
            outputs = call.layer(*args, **kwargs)
        values.update(zip(call.outputs, keras.tree.flatten(outputs)))
    graph.sites = sites


def _two_samples(x):
    if int(x.shape[0]) >= 2:
        return x[:2]
    return keras.ops.concatenate([x, x], axis=0)


def trains_by_design(layer):
    """Whether the layer (or a layer inside it) has weights made to be
    trained, frozen now or not: the default selection does not change when
    layers are frozen (fine-tuning, LoRA). A `Normalization` layer's
    statistics are not such weights; a frozen `Dense` kernel is."""
    if is_tf_keras(layer):
        return bool(layer.trainable_weights)
    if not isinstance(layer, keras.layers.Layer):
        return False
    return any(sub._trainable_variables for sub in layer._flatten_layers(include_self=True))


def is_model(obj):
    return isinstance(obj, keras.Model) or (
        is_tf_keras(obj) and hasattr(obj, "_is_graph_network")
    )


def is_model_built(model):
    """True once the model's graph (and so its inputs) is known."""
    if isinstance(model, keras.Sequential):
        return model._functional is not None or model.built
    return model.built


def build_graph(model, example=None):
    """Returns the `Graph` of a built model.

    Args:
        model: a `Sequential`, functional or subclassed `keras.Model`.
        example: for a subclassed model, a probe batch (array or list of
            arrays): its graph is recorded from one call on one sample.

    Raises:
        UnsupportedModelError: for a model that cannot be replayed exactly.
    """
    if _is_subclassed(model):
        return _subclassed_graph(model, example)
    builder = _Builder(model)
    inputs = _model_inputs(model)
    ids = [builder.new_id(t) for t in inputs]
    builder.add_model(model, ids, prefix="")
    names = [getattr(t, "name", f"input_{i}") for i, t in enumerate(inputs)]
    shapes = [tuple(t.shape) for t in inputs]
    return _split(builder, ids, names, shapes)


def default_selection(graph):
    """Keys of the sites of layers with weights made to be trained (frozen or
    not), of standalone activations, and of the feed-forward hidden units and
    attention heads inside blocks."""
    return [site.key for site in graph.sites if site.default]


def _is_activation_layer(layer):
    if is_tf_keras(layer):  # the same classes, by name, in Keras 2
        return type(layer).__name__ in {c.__name__ for c in ACTIVATION_LAYERS}
    return isinstance(layer, ACTIVATION_LAYERS)


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
            found = [
                site.key
                for site in graph.sites
                if site.kind == "layer" and site.layer is entry
            ]
        else:
            found = [entry] if entry in graph.keys else _short_name(graph, entry)
        if not found:
            _check_not_preprocessing(graph, entry)
            raise ValueError(
                f"Received a layer {entry if isinstance(entry, str) else entry.name!r} "
                f"that the model does not have. Expected one of {graph.keys}. "
                "Use these names (nested models: 'outer/inner')."
            )
        keys.extend(k for k in found if k not in keys)
    return keys


def _short_name(graph, name):
    """`[key]` for a name that ends exactly one key after a `/` (a layer of a
    nested model named without its model: "transformer_layer_0" for
    "bert_backbone/transformer_layer_0"); `[]` when none does.

    Raises:
        ValueError: when several keys end with it.
    """
    matches = [key for key in graph.keys if key.endswith("/" + name)]
    if len(matches) > 1:
        raise ValueError(
            f"Received a layer {name!r} that names several layers of the "
            f"model: {matches}. Expected one; pass the full key."
        )
    return matches


def _check_not_preprocessing(graph, entry):
    names = {c.key for c in graph.preprocessing if c.layer is entry or c.key == entry}
    if names:
        (key,) = sorted(names)[:1]
        raise ValueError(
            f"Received the layer {key!r}, a preprocessing layer: it reads "
            "strings or outputs integers, so it has no neurons with a "
            "derivative; it is replayed once on the probe batch and the "
            "computation starts after it. Expected a layer with a floating-"
            f"point output, one of {graph.keys}."
        )


def _model_inputs(model):
    if is_tf_keras(model) and model._is_graph_network:
        return model.inputs
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
        f"Received a model of class {type(model).__name__!r} whose inputs are "
        "unknown. Expected a `keras.Sequential`, a functional model, or a "
        "subclassed model with a probe batch."
    )


def _is_subclassed(model):
    if is_tf_keras(model):
        return not model._is_graph_network
    return isinstance(model, keras.Model) and not (
        isinstance(model, keras.Sequential) or _is_functional(model)
    )


def _subclassed_graph(model, example):
    if example is None or isinstance(example, dict):
        raise UnsupportedModelError(
            f"The subclassed model {model.name!r} needs its probe batch as an "
            "array or a list of arrays to record its graph; received "
            f"{type(example).__name__}. Pass the inputs positionally, as "
            "`model(x)` takes them."
        )
    arrays = [np.asarray(a) for a in (example if isinstance(example, (list, tuple)) else [example])]
    convert = keras.ops.convert_to_tensor
    sample = [
        convert(a[:1], keras.config.floatx() if a.dtype.kind == "f" else None) for a in arrays
    ]
    builder = _Builder(model)
    input_ids, recorded = _subclassed.recorded_graph(model, sample, builder.new_id)
    alias = {}
    for layer, ins, outs, arguments, keras_ids in recorded:
        ins = [alias.get(t, t) for t in ins]
        keras_ids = {k: alias.get(t, t) for k, t in keras_ids.items()}
        if isinstance(layer, keras.Model):
            if _is_subclassed(layer) or not isinstance(arguments.args, tuple) or len(arguments.args) != 1:
                raise UnsupportedModelError(
                    f"The subclassed model {model.name!r} calls the model "
                    f"{layer.name!r}, which is subclassed too or called with "
                    "several arguments; only Sequential and functional models "
                    "called on their inputs can be nested in it. Rebuild the "
                    "inner model as a functional model."
                )
            nested = builder.add_model(layer, ins, f"{layer.name}/")
            alias.update(zip(outs, nested))
            continue
        builder.add_call(layer, ins, outs, arguments, keras_ids)
    names = [f"input_{i}" for i in range(len(sample))]
    shapes = [(None, *a.shape[1:]) for a in arrays]
    return _split(builder, input_ids, names, shapes)


def _split(builder, input_ids, names, shapes):
    """The `Graph` of the recorded calls: preprocessing split off, the
    engine's inputs and the sensitivity inputs found."""
    dtypes = builder.dtypes
    model_inputs = [
        ModelInput(i, name, dtypes.get(i), shape)
        for i, name, shape in zip(input_ids, names, shapes, strict=True)
    ]
    origins = {i: (name,) for i, name in zip(input_ids, names)}
    preprocessing, calls = [], []
    fixed = set(input_ids)  # tensors the probe alone determines
    for call in builder.calls:
        if _is_preprocessing(call, fixed, dtypes):
            preprocessing.append(call)
            fixed.update(call.outputs)
            _trace_origins(call, origins)
        else:
            calls.append(call)
    read = {t for call in calls for t in call.inputs}
    engine_inputs = [t for t in input_ids if t in read]
    engine_inputs += [
        t for call in preprocessing for t in call.outputs if t in read
    ]
    labels = {i: name for i, name in zip(input_ids, names)}
    for call in preprocessing:
        for t in call.outputs:
            labels[t] = _output_label(call, t, origins)
    sensitivity = {
        t: labels[t] for t in engine_inputs if _is_float_dtype(dtypes.get(t))
    }
    # Front-end calls: every input is integer or string data (nothing float
    # reaches them), so their float outputs are the embedded inputs.
    data = {t for t in engine_inputs if not _is_float_dtype(dtypes.get(t))}
    for call in calls:
        if not call.inputs or not all(t in data for t in call.inputs):
            continue
        _trace_origins(call, origins)
        for t in call.outputs:
            if _is_float_dtype(dtypes.get(t)):
                sensitivity[t] = _output_label(call, t, origins)
            else:
                data.add(t)
    reached = {name for t in sensitivity for name in origins.get(t, ())}
    left_out = [
        m.name
        for m in model_inputs
        if not _is_float_dtype(m.dtype)
        and m.name not in reached
        and not _only_masks(m.id, preprocessing + calls, dtypes)
    ]
    return Graph(
        inputs=engine_inputs,
        input_names=[labels[t] for t in engine_inputs],
        input_dtypes=[dtypes.get(t) for t in engine_inputs],
        input_shapes=[
            next((m.shape for m in model_inputs if m.id == t), None)
            for t in engine_inputs
        ],
        calls=calls,
        model_inputs=model_inputs,
        preprocessing=preprocessing,
        sensitivity_inputs=sensitivity,
        left_out_inputs=left_out,
        next_id=builder.new_id(),
    )


def _only_masks(tensor, calls, dtypes):
    """Whether `tensor` (an integer model input) only masks: every call that
    reads it, directly or through calls without weights that output no
    float (a cast, a comparison), takes it as an argument named like a mask
    (keras_hub's `padding_mask`, `attention_mask`). Such an input carries no
    features, so leaving it out of the sensitivity to inputs needs no
    warning."""
    pending, seen = [tensor], set()
    while pending:
        t = pending.pop()
        if t in seen:
            continue
        seen.add(t)
        for call in calls:
            if t not in call.inputs or _passed_as_mask(call, t):
                continue
            if not trains_by_design(call.layer) and not any(
                _is_float_dtype(dtypes.get(o)) for o in call.outputs
            ):
                pending.extend(call.outputs)  # a mask computed from a mask
                continue
            return False
    return True


def _passed_as_mask(call, tensor):
    """Whether every place `call` receives `tensor` is a keyword argument
    named like a mask."""
    arguments = call.arguments
    if arguments is None:
        return False
    places = []
    for name, value in arguments.kwargs.items():
        for x in keras.tree.flatten(value):
            if call.keras_ids.get(id(x)) == tensor:
                places.append("mask" in name)
    for x in keras.tree.flatten(arguments.args):
        if call.keras_ids.get(id(x)) == tensor:
            places.append(False)
    return bool(places) and all(places)


def _is_preprocessing(call, fixed, dtypes):
    """A call that nothing is differentiated through, computed from the probe
    alone: it reads only model inputs and other such calls' outputs, has no
    trainable weights, and either reads strings or outputs no float
    (`TextVectorization`, `StringLookup`, `IntegerLookup`, `Hashing`,
    `Discretization`, an id mask such as `ops.not_equal(ids, 0)`)."""
    if not call.inputs or call.weights or not all(t in fixed for t in call.inputs):
        return False
    reads_strings = any(dtypes.get(t) == "string" for t in call.inputs)
    outputs_float = any(_is_float_dtype(dtypes.get(t)) for t in call.outputs)
    return reads_strings or not outputs_float


def _trace_origins(call, origins):
    """The model inputs each output of `call` is computed from."""
    sources = tuple(dict.fromkeys(n for t in call.inputs for n in origins.get(t, ())))
    for t in call.outputs:
        origins[t] = sources


def _output_label(call, tensor, origins):
    which = "" if len(call.outputs) == 1 else f" {call.outputs.index(tensor)}"
    sources = ", ".join(origins.get(tensor, ()))
    return f"{call.key} output{which} (from {sources})"


def _dtype_name(dtype):
    if getattr(dtype, "name", None) == "string":  # a TensorFlow string dtype
        return "string"
    try:
        return keras.backend.standardize_dtype(dtype)
    except ValueError:
        return str(dtype)


def _is_float_dtype(name):
    """Floating point, or unknown (treated as a tensor with a derivative)."""
    if name is None:
        return True
    try:
        return keras.backend.standardize_dtype(name).startswith(("float", "bfloat"))
    except ValueError:
        return True


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


class _NestedArguments:
    """A call's `(args, kwargs)` with symbolic tensors, filled by identity."""

    def __init__(self, args, kwargs):
        self.args, self.kwargs = args, kwargs

    def fill_in(self, tensor_dict):
        def fill(x):
            return tensor_dict.get(id(x), x)

        return (
            keras.tree.map_structure(fill, self.args),
            keras.tree.map_structure(fill, self.kwargs),
        )


class _Builder:
    def __init__(self, root):
        self.root = root
        self.calls = []
        self.dtypes = {}  # tensor id -> dtype name, where the graph says it
        self._next_id = 0
        self._calls_per_key = {}

    def new_id(self, tensor=None):
        self._next_id += 1
        if tensor is not None and getattr(tensor, "dtype", None) is not None:
            self.dtypes[self._next_id - 1] = _dtype_name(tensor.dtype)
        return self._next_id - 1

    def add_model(self, model, input_ids, prefix):
        if is_tf_keras(model):
            return self._add_tf_keras_model(model, input_ids, prefix)
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
        for t, i in zip(functional.inputs, input_ids):
            self.dtypes.setdefault(i, _dtype_name(t.dtype))
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
                    self.dtypes[i] = _dtype_name(t.dtype)
        return [tensor_ids[id(t)] for t in functional.outputs]

    def _add_tf_keras_model(self, model, input_ids, prefix):
        """A Keras 2 graph network: its nodes hold `call_args`/`call_kwargs`."""
        if not model._is_graph_network:
            raise UnsupportedModelError(
                f"The tf_keras model {model.name!r} is subclassed; only its "
                "Sequential and functional models can be replayed. Rebuild it "
                "as a functional model."
            )
        tensor_ids = {id(t): i for t, i in zip(model.inputs, input_ids, strict=True)}
        for t, i in zip(model.inputs, input_ids):
            self.dtypes.setdefault(i, _dtype_name(t.dtype))
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                inputs = [tensor_ids[id(t)] for t in node.keras_inputs]
                keras_ids = {id(t): tensor_ids[id(t)] for t in node.keras_inputs}
                outputs = self._add_layer_or_model(
                    node.layer,
                    inputs,
                    prefix,
                    _NestedArguments(node.call_args, node.call_kwargs),
                    keras_ids,
                    num_outputs=len(keras.tree.flatten(node.outputs)),
                )
                for t, i in zip(keras.tree.flatten(node.outputs), outputs, strict=True):
                    tensor_ids[id(t)] = i
                    self.dtypes[i] = _dtype_name(t.dtype)
        return [tensor_ids[id(t)] for t in model.outputs]

    def _add_layer_or_model(
        self, layer, input_ids, prefix, arguments, keras_ids, num_outputs=1
    ):
        if is_model(layer):
            return self.add_model(layer, input_ids, f"{prefix}{layer.name}/")
        outputs = [self.new_id() for _ in range(num_outputs)]
        self.add_call(layer, input_ids, outputs, arguments, keras_ids, prefix)
        return outputs

    def add_call(self, layer, input_ids, output_ids, arguments, keras_ids, prefix=""):
        name = prefix + layer.name
        count = self._calls_per_key.get(name, 0)
        self._calls_per_key[name] = count + 1
        # A layer called more than once: each call is its own entry.
        key = name if count == 0 else f"{name}@{count}"
        self.calls.append(
            Call(
                layer, key, tuple(input_ids), tuple(output_ids), arguments,
                keras_ids, root=self.root,
            )
        )
