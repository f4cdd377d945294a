"""Dead ReLUs appear when the learning rate is too high.

Trains the same MLP on the digits twice, with a sane and a too-high learning
rate, each with the sensitivity callback in its own run directory, then
prints the dead neurons per layer. Open both runs side by side:
`tensorboard --logdir logs/dead_relus`. Takes about half a minute.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

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
        print(f"\n{name}: validation accuracy {accuracy:.3f}; dead neurons by epoch")
        for key in ["hidden_1", "hidden_2"]:
            counts = [int((logged["weights"][key] == 0).sum()) for logged in sensitivity.sensitivities.values()]
            print(f"  {key:<9} {counts}")
    print(f"\nCompare the runs:\n  tensorboard --logdir {log_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("logs", "dead_relus"))
