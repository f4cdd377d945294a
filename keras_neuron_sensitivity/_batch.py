"""The probe batch: from what users pass to the tensors the engine is fed.

The user's batch is checked against the model's inputs (strings included);
the model's preprocessing layers (`TextVectorization`, lookups, hashing) are
then replayed on it, once and eagerly, so that the engine starts from plain
integer and float tensors whose every dimension the probe fixes.
"""

import sys
import warnings

import keras
import numpy as np

from keras_neuron_sensitivity.engine.replay import float32_compute
from keras_neuron_sensitivity.engine.site import Site


def take_inputs(data, probe_size=None):
    """Unpacks callback `probe_data` into model inputs (labels dropped).

    Accepts what `model.fit` accepts for `x`, or an `(x, y)` / `(x, y, w)`
    tuple, or a `tf.data.Dataset` of either (its first batches, up to
    `probe_size` samples; 128 by default). Returns a NumPy array, or a list or
    dict of them.
    """
    if _is_dataset(data):
        return _from_dataset(data, probe_size or 128)
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = data[0]
    if probe_size is not None:
        data = keras.tree.map_structure(lambda a: a[:probe_size], data)
    return data


def _from_dataset(dataset, size):
    taken, count = [], 0
    for element in dataset:
        if isinstance(element, tuple) and len(element) in (2, 3):
            element = element[0]
        element = keras.tree.map_structure(np.asarray, element)
        taken.append(element)
        count += len(keras.tree.flatten(element)[0])
        if count >= size:
            break
    if not taken:
        raise ValueError(
            "Received an empty `tf.data.Dataset` as probe data. Expected a "
            "dataset that yields at least one batch. Pass a non-empty dataset "
            "or the arrays themselves."
        )
    joined = keras.tree.map_structure(lambda *a: np.concatenate(a)[:size], *taken)
    return joined


def standardize(graph, x, what="x"):
    """Returns the engine's inputs (one tensor per `graph.inputs` entry).

    `x` is checked against the model's inputs, then the model's
    preprocessing calls (`graph.preprocessing`) are replayed on it.

    Raises:
        ValueError: on a structure, shape or size that does not fit the model,
            an empty batch, or non-finite values.
    """
    model_inputs = graph.model_inputs
    names = [m.name for m in model_inputs]
    if isinstance(x, dict):
        missing = [name for name in names if name not in x]
        if missing:
            raise ValueError(
                f"Received `{what}` as a dict with keys {sorted(x)}. Expected "
                f"one entry per model input, named {names}; missing "
                f"{missing}. Name the entries after the model's `Input` layers."
            )
        flat = [x[name] for name in names]
    elif isinstance(x, (list, tuple)):
        flat = list(x)
    else:
        flat = [x]
    if len(flat) != len(names):
        raise ValueError(
            f"Received `{what}` with {len(flat)} array(s). Expected {len(names)}, "
            f"one per model input {names}. Pass a list (or a dict keyed by "
            "input name) with one array per input."
        )
    tensors = [
        _to_tensor(value, m.name, m.dtype, m.shape, what)
        for value, m in zip(flat, model_inputs)
    ]
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(
            f"Received `{what}` whose arrays have different numbers of samples "
            f"{[int(t.shape[0]) for t in tensors]}. Expected the same number "
            "for every input. Slice them to the same length."
        )
    return preprocess(graph, tensors)


def preprocess(graph, tensors):
    """Replays the model's preprocessing calls on the model's inputs.

    Eager and once per probe batch: these calls (string lookups, hashing)
    have nothing to differentiate, and their outputs' shapes (a
    `TextVectorization`'s sequence length) are known only once they ran.

    Args:
        graph: the model's `probe.Graph`.
        tensors: one tensor per `graph.model_inputs` entry.

    Returns:
        One tensor per `graph.inputs` entry.
    """
    values = {m.id: t for m, t in zip(graph.model_inputs, tensors, strict=True)}
    with float32_compute([call.layer for call in graph.preprocessing]):
        for call in graph.preprocessing:
            site = Site(call, [values[t] for t in call.inputs])
            outputs = site.run(site.inputs)
            values.update(zip(call.outputs, (_tensor(y) for y in outputs)))
    return [
        _as_declared(values[t], dtype) for t, dtype in zip(graph.inputs, graph.input_dtypes)
    ]


def _as_declared(value, dtype):
    """A preprocessing output in the dtype its layer declares: a multi-hot
    `TextVectorization` says float32 and returns int64, which the next
    layer casts on the way in; the engine's rules read it as declared."""
    if dtype is None or _dtype_name(value) in ("string", dtype):
        return value
    return keras.ops.cast(value, dtype)


def _tensorflow():
    """TensorFlow's module if it is imported, else None: a `tf.data.Dataset`
    or a TensorFlow tensor can only come from a process that imported it, and
    on JAX and PyTorch this package never imports it."""
    return sys.modules.get("tensorflow")


def _is_dataset(data):
    tf = _tensorflow()
    return tf is not None and isinstance(data, tf.data.Dataset)


def _dtype_name(value):
    tf = _tensorflow()
    if tf is not None and isinstance(value, tf.Tensor):
        return value.dtype.name
    return keras.backend.standardize_dtype(value.dtype)


def _tensor(value):
    """A tensor of the Keras backend (strings stay TensorFlow tensors: only
    the TensorFlow backend reads text)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(value))


def _to_tensor(value, name, dtype, spec, what):
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - the message says what it was
        raise TypeError(
            f"Received `{what}` for input {name!r} of type "
            f"{type(value).__name__}, which cannot be converted to an array. "
            "Expected a NumPy array or a tensor."
        ) from error
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(
            f"Received an empty `{what}` for input {name!r} (shape "
            f"{array.shape}). Expected at least one sample, shape "
            f"(batch, {', '.join(str(d) for d in spec[1:])}). Pass a non-empty "
            "probe batch."
        )
    expected = tuple(spec[1:])
    array = _adjust_rank(array, expected)
    got = array.shape[1:]
    if len(got) != len(expected) or any(
        e is not None and e != g for e, g in zip(expected, got)
    ):
        raise ValueError(
            f"Received `{what}` for input {name!r} with shape {array.shape}. "
            f"Expected (batch, {', '.join(str(d) for d in expected)}), the "
            "model's input shape. Pass samples shaped like the training data."
        )
    if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        raise ValueError(
            f"Received `{what}` for input {name!r} with "
            f"{int(np.size(array) - np.isfinite(array).sum())} NaN or infinite "
            "value(s). Expected finite numbers. Clean or drop those samples."
        )
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "string":
        if array.dtype.kind not in "USO":
            raise TypeError(
                f"Received `{what}` for input {name!r} of dtype {array.dtype}. "
                "Expected strings: the model reads text there. Pass the raw "
                "strings (a NumPy array or list of str)."
            )
        if keras.backend.backend() != "tensorflow":
            raise TypeError(
                f"Received `{what}` for input {name!r}: strings, on the "
                f"{keras.backend.backend()!r} backend. Expected numbers: "
                "only the TensorFlow backend carries string tensors through a "
                "model. Turn the text into token ids before the model (call "
                "the `TextVectorization` layer in your data pipeline), or "
                "use KERAS_BACKEND=tensorflow."
            )
        return _tensor(array.astype(object))
    if array.dtype.kind in "USO":
        raise TypeError(
            f"Received `{what}` for input {name!r} holding strings "
            f"({array.dtype}). Expected {dtype} numbers: that input "
            "is not text. Pass numbers, or give the model a string input."
        )
    return _tensor(array.astype(dtype))


def _adjust_rank(array, expected):
    """Adds a missing last axis of size 1, as Keras's functional models do
    (strings of shape `(B,)` for `Input(shape=(1,), dtype="string")`)."""
    if array.ndim == len(expected) and expected and expected[-1] == 1:
        return array[..., None]
    return array


def warn_integer_inputs(graph):
    """Checks that a sensitivity to inputs exists, and warns about the
    integer or string inputs it leaves out.

    It is measured at `graph.sensitivity_inputs`: the floating-point inputs
    and the embedded inputs (the output of the call that first turns integer
    or string inputs into floats). Inputs from which none is computed (a
    padding mask going straight into attention) are left out, with a
    warning naming them.

    Raises:
        ValueError: if the model has no tensor at which a sensitivity to
            inputs exists.
    """
    if not graph.sensitivity_inputs:
        names = [m.name for m in graph.model_inputs]
        raise ValueError(
            f"Received wrt='inputs' for a model whose inputs {names} are "
            "integers or strings that no layer turns into floating-point "
            "values, so there is no derivative with respect to them (nor to "
            "an embedding of them). Expected a floating-point input, or an "
            "Embedding-like layer on the integer inputs. Use wrt='weights'."
        )
    if graph.left_out_inputs:
        # Python's default filter shows it once per call site, not per epoch.
        warnings.warn(
            f"Model inputs {graph.left_out_inputs} are integers or strings "
            "that reach no Embedding-like layer; they have no derivative and "
            "are left out of the sensitivity to inputs, which is measured at "
            f"{list(graph.sensitivity_inputs.values())}.",
            stacklevel=3,
        )


def resolve_wrt(graph, wrt):
    """The callback's `wrt` for this model: None means both where they
    exist, so a model without any tensor at which a sensitivity to inputs
    exists logs weights only (with a warning saying why). An explicit
    "inputs" must be honoured (see `warn_integer_inputs`)."""
    if wrt is None:
        if graph.sensitivity_inputs:
            warn_integer_inputs(graph)
            return ("weights", "inputs")
        warnings.warn(
            f"The model's inputs {[m.name for m in graph.model_inputs]} "
            "are integers or strings that no layer turns into floating-point "
            "values, so only the sensitivity to weights is logged (the "
            "default wrt logs both where they exist).",
            stacklevel=3,
        )
        return ("weights",)
    if "inputs" in wrt:
        warn_integer_inputs(graph)
    return wrt
