"""The product on JAX and PyTorch (`make test` runs this file under each).

Every number is checked against brute force on the same backend
(`oracle.py`, the TensorFlow suite's oracle, by `jax.jacrev` or
`torch.func.jacrev` here) and against the TensorFlow engine on the same weights
(`workers/tf_reference.py`, in a TensorFlow process).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import oracle
import zoo
from keras_neuron_sensitivity import (
    NeuronSensitivityCallback,
    load_sensitivity,
    neuron_jacobian,
    neuron_sensitivity,
)

BACKEND = keras.backend.backend()
WORKERS = os.path.join(os.path.dirname(__file__), "..", "workers")
EMBEDDED = {"cnn": None, "text": "embedding"}


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory):
    """Each zoo model with seeded weights and its probe. The weights and
    probes are saved in one folder, and the TensorFlow worker starts on them
    at once, beside the tests that do not need its values."""
    folder = tmp_path_factory.mktemp("zoo")
    built = {}
    for name in zoo.MODELS:
        keras.utils.set_random_seed(3)
        model = zoo.MODELS[name]()
        x = zoo.probe(name)
        model.save_weights(str(folder / f"{name}.weights.h5"))
        np.savez(folder / f"{name}.npz", **{f"x{i}": a for i, a in enumerate(_as_list(x))})
        built[name] = model, x, folder
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = subprocess.Popen(
        [sys.executable, os.path.join(WORKERS, "tf_reference.py"), str(folder)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    yield built, worker
    if worker.poll() is None:
        worker.kill()


def _as_list(x):
    return x if isinstance(x, list) else [x]


def _brute_force(model, x, layer, wrt, embedded=None):
    """`(B, C)`: `layer`'s output's sensitivities by brute force; to inputs,
    at the output of the layer named `embedded` for token ids."""
    fn = oracle.output_fn(model, model.get_layer(layer).output)
    return oracle.brute_force(model, x, fn, wrt, [model.get_layer(embedded)] if embedded else ())


@pytest.fixture(scope="module")
def tensorflow_values(zoo_models):
    """`{name: {"wrt/layer": (B, C)}}` from the TensorFlow engine, computed
    in one TensorFlow process on the same weights and probes."""
    built, worker = zoo_models
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    folder = next(iter(built.values()))[2]
    return {name: dict(np.load(folder / f"{name}.out.npz")) for name in zoo.MODELS}


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
@pytest.mark.parametrize("name", ["cnn", "text"])
def test_exact_matches_brute_force(zoo_models, name, wrt):
    model, x, _ = zoo_models[0][name]
    got = neuron_sensitivity(model, x, wrt=wrt, reduction=None, method="exact")
    assert got.method == "exact"
    assert list(got) == [l.name for l in model.layers if l.trainable_weights or l.name == "relu"]
    for layer, value in got.items():
        expected = _brute_force(model, x, layer, wrt, EMBEDDED[name])
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=layer)


@pytest.mark.parametrize("budget_mb", [0.01, 0.02])
@pytest.mark.parametrize("name", ["cnn", "two_inputs"])
def test_exact_in_small_chunks_matches_brute_force(zoo_models, name, budget_mb):
    """Tight memory budgets split the neurons, or the samples (the last
    chunk padded), over several calls; the values do not change."""
    model, x, _ = zoo_models[0][name]
    x = [np.concatenate([a] * 3)[:7] for a in _as_list(x)]  # 7 samples
    x = x if len(x) > 1 else x[0]
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(
            model, x, wrt=wrt, reduction=None, method="exact", memory_budget_mb=budget_mb
        )
        for layer in ("dense", "head"):
            expected = _brute_force(model, x, layer, wrt)
            np.testing.assert_allclose(got[layer], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_exact_matches_tensorflow(zoo_models, tensorflow_values, name):
    model, x, _ = zoo_models[0][name]
    reference = tensorflow_values[name]
    for wrt in ("weights", "inputs"):
        got = neuron_sensitivity(model, x, wrt=wrt, reduction=None, method="exact")
        assert sorted(got) == sorted(k.split("/", 1)[1] for k in reference if k.startswith(wrt))
        for layer, value in got.items():
            np.testing.assert_allclose(
                value, reference[f"{wrt}/{layer}"], rtol=1e-4, atol=1e-7, err_msg=f"{wrt}/{layer}"
            )


def test_jacobian_matches_brute_force(zoo_models):
    model, x, _ = zoo_models[0]["cnn"]
    got = neuron_jacobian(model, x, "dense", wrt="weights")
    expected = oracle.jacobians(model, x, oracle.output_fn(model, model.get_layer("dense").output), "weights")
    for j, v in enumerate(model.trainable_variables):
        if v.path.startswith("cnn/head"):
            assert v.path not in got  # downstream of the layer
            continue
        want = np.stack([sample[j] for sample in expected])
        np.testing.assert_allclose(got[v.path], want, rtol=1e-5, atol=1e-7, err_msg=v.path)
    inputs = neuron_jacobian(model, x, "dense", wrt="inputs")
    assert inputs.shape == (3, 5, 6, 6, 2)
    norms = np.sqrt(np.sum(np.square(inputs.reshape(3, 5, -1)), axis=-1))
    np.testing.assert_allclose(
        norms, _brute_force(model, x, "dense", "inputs"), rtol=1e-5
    )


@pytest.mark.parametrize("wrt", ["weights", "inputs"])
def test_estimate_is_unbiased_in_the_square(zoo_models, wrt):
    """A z-test over 150 fixed seeds of 2 probes each.

    With a Gaussian tangent, `(J_k v)^2 = ||J_k||^2 chi2_1` for every neuron
    and sample, so the mean of `S` squared values of `m` probes has standard
    error `||J_k||^2 sqrt(2 / (m S))`. Every neuron and sample must lie within
    4.5 of them (about 60 comparisons: odds of a false alarm below 1e-3; the
    seeds are fixed, so the test cannot flake).
    """
    model, x, _ = zoo_models[0]["cnn"]
    layers = ["conv", "dense"]
    seeds, probes = 150, 2
    exact = neuron_sensitivity(model, x, wrt=wrt, layers=layers, reduction=None)
    draws = {k: [] for k in layers}
    for seed in range(seeds):
        est = neuron_sensitivity(
            model, x, wrt=wrt, layers=layers, reduction=None,
            method="estimate", num_probes=probes, seed=seed,
        )
        assert est.method == "estimate" and est.num_probes == probes
        for k in layers:
            draws[k].append(np.square(est[k]))
    for k in layers:
        mean = np.mean(draws[k], axis=0)
        square = np.square(exact[k].astype("float64"))
        assert np.all(square > 0), k  # no dead neuron here: every z is defined
        z = (mean - square) / (square * np.sqrt(2 / (probes * seeds)))
        assert np.all(np.abs(z) < 4.5), (k, z)


def test_estimate_is_repeatable_and_keeps_exact_zeros():
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(4, activation="relu", name="h"),
        keras.layers.Dense(2, name="out"),
    ])
    model.get_layer("h").set_weights([np.full((3, 4), -1.0, "float32"), np.zeros(4, "float32")])
    x = np.ones((2, 3), "float32")  # every `h` neuron is dead: pre-activation -3
    first = neuron_sensitivity(model, x, method="estimate", seed=7, num_probes=4)
    again = neuron_sensitivity(model, x, method="estimate", seed=7, num_probes=4)
    np.testing.assert_array_equal(first["out"], again["out"])
    np.testing.assert_array_equal(first["h"], np.zeros(4))
    # `out` still depends on its bias: d out_k / d b_k = 1
    assert np.all(first["out"] > 0)


def test_auto_computes_exact_on_a_small_model(zoo_models):
    model, x, _ = zoo_models[0]["cnn"]
    got = neuron_sensitivity(model, x, method="auto")
    assert got.method == "exact"


@pytest.mark.parametrize("name", ["cnn", "text"])
def test_fit_logs_every_layer_and_leaves_training_alone(tmp_path, name):
    rng = np.random.default_rng(0)
    x = np.concatenate([zoo.probe(name, batch=24)] * 2)
    y = rng.integers(0, 3, size=len(x))

    def train(callbacks):
        keras.utils.set_random_seed(4)
        model = zoo.MODELS[name]()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    callback = NeuronSensitivityCallback(x[:8], log_dir=str(tmp_path))
    model = train([callback, keras.callbacks.TensorBoard(str(tmp_path))])
    twin = train([])
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)  # the callback changed nothing
    logged = load_sensitivity(str(tmp_path))
    layers = [l.name for l in model.layers if l.trainable_weights or l.name == "relu"]
    for wrt in ("weights", "inputs"):
        assert list(logged[wrt]) == layers
        for layer in layers:
            assert list(logged[wrt][layer]) == [0, 1]
        # The last step holds the final weights' values.
        final = neuron_sensitivity(model, x[:8], wrt=wrt, method="exact")
        for layer in layers:
            np.testing.assert_allclose(logged[wrt][layer][1], final[layer], rtol=1e-6)


def test_a_string_probe_is_refused_with_what_to_do(tmp_path):
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=4)
    vectorize.adapt(np.array(["a b c", "b c d"]))
    text = keras.Input((1,), dtype="string")
    model = keras.Model(text, keras.layers.Dense(2)(keras.layers.Embedding(10, 3)(vectorize(text))))
    probe = np.array([["a b"], ["c d"]], dtype=object)
    match = rf"strings, on the '{BACKEND}' backend.*token ids before the model"
    with pytest.raises(TypeError, match=match):
        neuron_sensitivity(model, probe)
    callback = NeuronSensitivityCallback(probe, log_dir=str(tmp_path))
    callback.set_model(model)
    with pytest.raises(TypeError, match=match):  # when `fit` starts, before a step
        callback.on_train_begin()

