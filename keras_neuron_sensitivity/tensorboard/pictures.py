"""The heat-map images: their colours, their drawing, and when they are drawn.

Drawn with Pillow, imported on the first drawing so that importing the
package stays cheap.
"""

import functools
import io

import numpy as np

HEATMAP_DESCRIPTION = (
    "Rows: the layer's neurons, 0 at the top. Columns: the logged epochs, "
    "oldest on the left. Colour: log10 of the sensitivity, from the 5th "
    "percentile of the image's non-zero values (dark purple) to the 95th "
    "(yellow); values beyond take the end colours, so a few outlying neurons "
    "cannot wash out the others. The strip at the bottom is that scale, with "
    "its two limits printed under its ends; the `dead_neurons` text gives "
    "each epoch's smallest and largest value. Magenta: dead (exactly zero). "
    "Pale blue: nothing trainable upstream (zero, but not dead). Grey: NaN or "
    "infinite."
)
# The colour scale's limits: these percentiles of the image's positive
# values, so that a few outlying neurons cannot push every other cell to one
# end of the palette. The dashboard's matrices use the same rule.
HEATMAP_QUANTILES = (0.05, 0.95)

# Heat maps hold the whole history, so drawing them every epoch would be
# wasted work (it costs more than the sweep on small models) and would make
# the event file grow with the square of the epochs. They are drawn after 1,
# 2, 4, ..., 64 logged epochs, then every 64 (and when training ends), with
# at most HEATMAP_COLUMNS columns: so each drawing has a bounded size and the
# file grows by a bounded amount per logged epoch however long the run.
HEATMAP_COLUMNS = 128
HEATMAP_EVERY = 64


def heatmap_due(logged):
    """Whether the heat maps are drawn after the `logged`-th logged epoch."""
    if logged < HEATMAP_EVERY:
        return logged & (logged - 1) == 0
    return logged % HEATMAP_EVERY == 0


def heatmap_columns(steps):
    """The logged steps a heat map shows: all of them, or `HEATMAP_COLUMNS`
    spread evenly from the first to the last."""
    steps = sorted(steps)
    if len(steps) <= HEATMAP_COLUMNS:
        return steps
    picks = np.linspace(0, len(steps) - 1, HEATMAP_COLUMNS).round().astype(int)
    return [steps[i] for i in picks]


# Viridis at five stops: perceptually ordered, readable in grey, and without
# magenta, which is kept for dead neurons.
_COLOURS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    np.float64,
)
_DEAD = (255, 0, 255)
_NONFINITE = (128, 128, 128)
_FROZEN = (190, 215, 235)  # nothing trainable upstream: pale blue
_PAPER = (255, 255, 255)
_INK = (64, 64, 64)
_SCALE_ROWS = 6  # the colour strip's height
_GAP_ROWS = 2  # white rows above the strip, and above and between its labels
_FONT_SIZE = 13  # pixels: digits about 9 high
_MIN_WIDTH = 128  # room for two labels in most runs; wider when they need it
_LABEL_SPACE = 8  # pixels at least between the two labels


def colour_limits(matrix):
    """`(low, high)`: the log10 limits of a heat map's colour scale.

    The `HEATMAP_QUANTILES` of log10 of the positive finite values (numpy's
    linear interpolation); None when there is none (all dead or NaN).
    """
    matrix = np.asarray(matrix, np.float64)
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    if not positive.size:
        return None
    low, high = np.quantile(np.log10(positive), HEATMAP_QUANTILES)
    return float(low), float(high)


def _colour(t):
    """Colours for `t` in [0, 1], as floats."""
    position = np.clip(t, 0, 1) * (len(_COLOURS) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_COLOURS) - 2)
    frac = (position - low)[..., None]
    return _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac


def _cells(matrix, frozen):
    """`(cells, limits)`: `(C, E, 3)` uint8, one pixel per neuron and logged
    epoch, and the scale's `colour_limits` (None: no positive value)."""
    finite = np.isfinite(matrix)
    positive = finite & (matrix > 0)
    cells = np.zeros(matrix.shape + (3,))
    limits = colour_limits(matrix)
    if limits is not None:
        low, high = limits
        logs = np.log10(matrix[positive])
        # One distinct value: the middle colour rather than an end.
        cells[positive] = _colour((logs - low) / (high - low) if high > low else 0.5)
    cells[finite & (matrix == 0)] = _DEAD
    if frozen is not None:
        cells[np.stack(frozen, axis=1) & finite & (matrix == 0)] = _FROZEN
    cells[~finite] = _NONFINITE
    return np.rint(cells).astype(np.uint8), limits


def heatmap(columns, frozen=None):
    """A Pillow RGB image: neurons (rows) by logged epochs (columns).

    Below the cells, the colour scale as a strip with its limits written
    under its two ends (see `HEATMAP_DESCRIPTION`).

    Args:
        columns: one `(C,)` per-neuron vector per logged epoch, oldest first.
        frozen: one `(C,)` bool per column (or None): the neurons with
            nothing trainable upstream, drawn pale blue, not as dead.

    Returns:
        A `PIL.Image.Image` in mode "RGB" (`png` encodes it).
    """
    from PIL import Image, ImageDraw

    matrix = np.stack([np.asarray(c, np.float64) for c in columns], axis=1)
    cells, limits = _cells(matrix, frozen)
    font = _font()
    labels = [_short_number(10 ** v) for v in limits] if limits is not None else []
    label_widths = [font.getbbox(text)[2] for text in labels]
    neurons, epochs = matrix.shape
    cell_height = int(np.clip(192 // neurons, 1, 8))
    needed = max(_MIN_WIDTH, sum(label_widths) + _LABEL_SPACE)
    cell_width = max(int(np.clip(256 // epochs, 1, 16)), -(-needed // epochs))
    width, height = epochs * cell_width, neurons * cell_height
    _, top, _, bottom = font.getbbox("0123456789.E-")
    label_rows = bottom - top + 2 * _GAP_ROWS

    picture = Image.new("RGB", (width, height + _GAP_ROWS + _SCALE_ROWS + label_rows), _PAPER)
    picture.paste(Image.fromarray(cells).resize((width, height), Image.Resampling.NEAREST))
    scale = np.rint(_colour(np.linspace(0, 1, width))).astype(np.uint8)[None]
    picture.paste(Image.fromarray(np.repeat(scale, _SCALE_ROWS, axis=0)), (0, height + _GAP_ROWS))
    if labels:
        draw = ImageDraw.Draw(picture)
        y = height + 2 * _GAP_ROWS + _SCALE_ROWS - top
        draw.text((0, y), labels[0], fill=_INK, font=font)
        draw.text((width - label_widths[1], y), labels[1], fill=_INK, font=font)
    return picture


def png(picture):
    """The PNG bytes of a Pillow image."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def _font():
    """Pillow's default font, scalable (Pillow >= 10.1, with FreeType)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=_FONT_SIZE)


def _short_number(value):
    """Two significant digits, the exponent short: 0.028, 4.1, 1.2E-5."""
    text = f"{value:.2g}".upper()
    if "E" in text:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}E{int(exponent)}"
    return text
