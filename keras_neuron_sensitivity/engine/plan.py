"""`Plan`: what the exact sweep computes and how, decided once per model,
selection and probe shape.

`Sweep` makes it (the calls to replay and their rules, the targets and where
their rows start, which tensors are worth a cotangent, the Gram cuts, how
the samples and rows are chunked) and its executors take it: the Gram passes
(`sweep._Grams`) and the reverse rounds (`sweep._Reverse`) read this object,
not the sweep's private state.
"""

import dataclasses


@dataclasses.dataclass(eq=False)
class Plan:
    """The exact sweep's plan.

    Attributes:
        wrt: what is computed, `"weights"` and/or `"inputs"`.
        inputs: the graph's input tensor ids.
        calls: the calls to replay, in order (exposing the selected sites
            inside them, `probe.Graph.expose`).
        rules: one `Rule` per call.
        targets: per target (selected key), the index of its call.
        target_outputs: per target, the position of its tensor among its
            call's outputs.
        seeds: call index -> the targets whose rows start there.
        rank: target -> its position in the canonical order (deepest first),
            in which every block of rows holds its targets.
        live: tensor id -> whether a cotangent there is worth computing.
        shared: ids of the layers with weights called more than once.
        float_inputs: the sensitivity inputs that are graph inputs.
        embedded: the sensitivity inputs that are outputs of calls.
        cuts: the `gram.Cut`s rows stop at, in call order.
        cut_of: tensor id -> index into `cuts`.
        samples: samples per chunk (None until planned on a probe).
        rows: per target, rows (neurons) per round.
        widths: per target, its number of neurons.
        packed: per target, whether its rows are packed by liveness
            (`Rule.live_neurons`; None until the first chunk decides).
    """

    wrt: tuple
    inputs: list
    calls: list
    rules: list
    targets: list
    target_outputs: list
    seeds: dict
    rank: dict
    live: dict
    shared: set
    float_inputs: list
    embedded: set
    cuts: list = dataclasses.field(default_factory=list)
    cut_of: dict = dataclasses.field(default_factory=dict)
    samples: int = None
    rows: list = None
    widths: list = None
    packed: list = None

    @property
    def ready(self):
        """Whether the chunks are planned (on a first probe batch)."""
        return self.samples is not None
