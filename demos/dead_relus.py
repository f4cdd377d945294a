"""Dead ReLUs appear when the learning rate is too high, dormant ones first.

Trains the same MLP on the digits twice, with a sane and a too-high learning
rate, each with the sensitivity callback in its own run directory, then
prints per layer and epoch the dead neurons (sensitivity exactly zero) and
the dormant ones (tau-score at most 0.1: they still fire, at under a tenth
of their layer's average, and can still learn). Dormant neurons that are not
yet dead are the ones a recycling method (ReDo) or a lower learning rate
could still save. Open both runs side by side:
`tensorboard --logdir logs/dead_relus` (the Neurons tab: "Sort neurons by
first epoch of dormancy"). Takes about half a minute.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import digits, digits_mlp  # noqa: E402
from keras_neuron_sensitivity import NeuronSensitivityCallback  # noqa: E402


def train(learning_rate, log_dir):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = digits()
    model = digits_mlp()
    model.compile(keras.optimizers.SGD(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    sensitivity = NeuronSensitivityCallback(x_val[:128], log_dir=log_dir, wrt="weights")
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=10, verbose=0,
                        callbacks=[sensitivity, keras.callbacks.TensorBoard(log_dir)])
    return sensitivity, history.history["val_accuracy"][-1]


def main(log_dir):
    for name, learning_rate in [("sane_lr_0.05", 0.05), ("too_high_lr_2.0", 2.0)]:
        sensitivity, accuracy = train(learning_rate, os.path.join(log_dir, name))
        print(f"\n{name}: validation accuracy {accuracy:.3f}; neurons by epoch")
        for key in ["hidden_1", "hidden_2"]:
            for status in ["dead", "dormant"]:
                counts = [int(a.counts(status)[key]) for a in sensitivity.activities.values()]
                print(f"  {key:<9} {status:<8} {counts}")
        history = list(sensitivity.activities.values())
        last = history[-1]
        for key in ["hidden_1", "hidden_2"]:
            statuses = [a[key]["status"] for a in history]
            died = (statuses[-1] == "dead") & (statuses[0] != "dead")
            warned = died & np.any([s == "dormant" for s in statuses], axis=0)
            if died.any():
                print(f"  {key}: {died.sum()} neurons died during training, {warned.sum()} of them "
                      "were dormant first")
            dormant = last[key]["status"] == "dormant"
            if dormant.any():
                print(f"  {key}: dormant, not dead, at the last epoch: neurons "
                      f"{', '.join(map(str, dormant.nonzero()[0][:12]))}"
                      f"{' ...' if dormant.sum() > 12 else ''} (firing on "
                      f"{last[key]['firing_rate'][dormant].mean():.0%} of the probe on average, "
                      f"tau-scores {last[key]['tau_score'][dormant].min():.3f} to "
                      f"{last[key]['tau_score'][dormant].max():.3f})")
    print(f"\nCompare the runs:\n  tensorboard --logdir {log_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "dead_relus"))
