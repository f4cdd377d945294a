"""What the demos share: the digits data and the closing summary."""

import os
import shutil
import sys

import numpy as np
from sklearn.datasets import load_digits


def digits(image=False):
    """scikit-learn's 1,797 digits, scaled to [0, 1], shuffled: train, val."""
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    if image:
        x = x.reshape(-1, 8, 8, 1)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def digits_mlp():
    """The demos' MLP for the 64 digit pixels: 128 and 64 ReLUs, softmax out."""
    import keras

    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ]
    )


def print_summary(callback, log_dir):
    """Per layer at the last logged epoch: neurons, dead, dormant, saturated,
    mean sensitivities."""
    last = max(callback.sensitivities)
    logged = callback.sensitivities[last]
    health = callback.activities.get(last, {})
    print(f"\nNeurons at the last logged epoch ({last}):")
    print(f"{'layer':<16} {'neurons':>7} {'dead':>5} {'dormant':>8} {'saturated':>10} "
          f"{'mean to weights':>16} {'mean to inputs':>15}")
    for key, to_weights in logged["weights"].items():
        to_inputs = logged["inputs"][key]
        status = health[key]["status"] if key in health else np.array([])
        print(
            f"{key:<16} {to_weights.size:>7} {int(np.sum(to_weights == 0)):>5} "
            f"{int(np.sum(status == 'dormant')):>8} {int(np.sum(status == 'saturated')):>10} "
            f"{to_weights.mean():>16.4g} {to_inputs.mean():>15.4g}"
        )
    tensorboard = shutil.which("tensorboard", path=os.path.dirname(sys.executable))
    tensorboard = os.path.relpath(tensorboard) if tensorboard else "tensorboard"
    print(f"\nOpen the dashboards with:\n  {tensorboard} --logdir {log_dir}")
