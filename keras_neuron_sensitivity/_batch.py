"""The probe batch: from what users pass to tensors aligned with the model's inputs."""

import warnings

import numpy as np
import tensorflow as tf


def take_inputs(data, probe_size=None):
    """Unpacks callback `probe_data` into model inputs (labels dropped).

    Accepts what `model.fit` accepts for `x`, or an `(x, y)` / `(x, y, w)`
    tuple, or a `tf.data.Dataset` of either (its first batches, up to
    `probe_size` samples; 128 by default). Returns a NumPy array, or a list or
    dict of them.
    """
    if isinstance(data, tf.data.Dataset):
        return _from_dataset(data, probe_size or 128)
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = data[0]
    if probe_size is not None:
        data = tf.nest.map_structure(lambda a: a[:probe_size], data)
    return data


def _from_dataset(dataset, size):
    taken, count = [], 0
    for element in dataset:
        if isinstance(element, tuple) and len(element) in (2, 3):
            element = element[0]
        element = tf.nest.map_structure(np.asarray, element)
        taken.append(element)
        count += len(tf.nest.flatten(element)[0])
        if count >= size:
            break
    if not taken:
        raise ValueError(
            "Received an empty `tf.data.Dataset` as probe data. Expected a "
            "dataset that yields at least one batch. Pass a non-empty dataset "
            "or the arrays themselves."
        )
    joined = tf.nest.map_structure(lambda *a: np.concatenate(a)[:size], *taken)
    return joined


def standardize(graph, x, what="x"):
    """Returns one tensor per model input, checked against the model.

    Raises:
        ValueError: on a structure, shape or size that does not fit the model,
            an empty batch, or non-finite values.
    """
    names = graph.input_names
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
        _to_tensor(value, name, dtype, spec, what)
        for value, name, dtype, spec in zip(
            flat, names, graph.input_dtypes, graph.input_shapes
        )
    ]
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(
            f"Received `{what}` whose arrays have different numbers of samples "
            f"{[int(t.shape[0]) for t in tensors]}. Expected the same number "
            "for every input. Slice them to the same length."
        )
    return tensors


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
    return tf.convert_to_tensor(array.astype(tf.as_dtype(dtype).as_numpy_dtype))


def warn_integer_inputs(graph):
    """Warns that integer inputs are left out of sensitivity to inputs.

    Python's warning registry shows it once per calling line (the default
    filter), not once per epoch; users control it with `warnings` filters.

    Raises:
        ValueError: if no floating-point input is left.
    """
    ints = [
        name
        for name, dtype in zip(graph.input_names, graph.input_dtypes)
        if not tf.as_dtype(dtype).is_floating
    ]
    if len(ints) == len(graph.input_names):
        raise ValueError(
            f"Received wrt='inputs' for a model whose inputs {ints} are all "
            "integers (for example token ids), which have no derivative. "
            "Expected at least one floating-point input. Use wrt='weights'."
        )
    message = (
        f"Integer model inputs {ints} have no derivative and are left out of "
        "the sensitivity to inputs."
    )
    if ints:
        warnings.warn(message, stacklevel=4)
