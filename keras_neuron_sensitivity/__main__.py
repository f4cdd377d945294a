"""`python -m keras_neuron_sensitivity report LOG_DIR`.

The directory is checked before TensorFlow is imported, so a mistyped path
answers at once, in one line.
"""

import os
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 2 and argv[0] == "report":
        problem = _problem(argv[1])
        if problem:
            print(f"keras-neuron-sensitivity: error: {problem}", file=sys.stderr)
            return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_neuron_sensitivity import report

    return report.main(argv)


def _problem(log_dir):
    if not os.path.isdir(log_dir):
        return f"no such directory: {log_dir!r}"
    for _, _, files in os.walk(log_dir):
        if any(".tfevents." in name for name in files):
            return None
    return (
        f"no TensorBoard event files under {log_dir!r}: expected the log_dir "
        "of a NeuronSensitivityCallback that logged at least one epoch"
    )


if __name__ == "__main__":
    sys.exit(main())
