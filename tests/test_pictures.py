"""The heat-map images: their colours, their legend's text, and what is written.

Colours are checked against viridis's stops written here as literals; a
written heat map is read back with TensorBoard's own loader and decoded with
Pillow, as TensorBoard's Images dashboard shows it.
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from keras_neuron_sensitivity.tensorboard.pictures import colour_limits, heatmap
from keras_neuron_sensitivity.tensorboard.writer import SensitivityWriter

VIRIDIS = {0.0: [68, 1, 84], 0.25: [59, 82, 139], 0.5: [33, 145, 140], 0.75: [94, 201, 98], 1.0: [253, 231, 37]}
DEAD, NONFINITE, PAPER = [255, 0, 255], [128, 128, 128], [255, 255, 255]


def test_heatmap_colours_span_the_5th_to_95th_percentile():
    # 21 values: numpy's 5th and 95th percentiles are then exactly the second
    # smallest and second largest, 0.1 and 10. The outliers 1e-3 and 1e12 take
    # the end colours instead of stretching the scale: under the old min-max
    # rule, 1.0 would have sat at 3/15 of the palette, nearly dark purple.
    regular = [0.1] * 3 + [10 ** -0.5] * 4 + [1.0] * 5 + [10 ** 0.5] * 4 + [10.0] * 3
    values = np.array([1e-3, *regular, 1e12, 0.0, np.nan], np.float32)
    low, high = colour_limits(values[:, None])
    assert (low, high) == pytest.approx((-1.0, 1.0), abs=1e-6)

    image = np.asarray(heatmap([values]))
    cells = image[: 8 * len(values): 8, 0]  # 23 neurons: 8 pixel rows each
    expected = {
        0: VIRIDIS[0.0],  # 1e-3, below the 5th percentile
        1: VIRIDIS[0.0],  # 0.1
        8: VIRIDIS[0.5],  # 1.0, the middle in log10
        13: VIRIDIS[0.75],  # 10**0.5
        19: VIRIDIS[1.0],  # 10
        20: VIRIDIS[1.0],  # 1e12, above the 95th percentile
        21: DEAD,
        22: NONFINITE,
    }
    for neuron, colour in expected.items():
        np.testing.assert_allclose(cells[neuron], colour, atol=1, err_msg=f"neuron {neuron}")


def test_heatmap_of_one_distinct_value_is_the_middle_colour_and_all_dead_has_no_scale():
    image = np.asarray(heatmap([np.array([2.0, 2.0, 0.0], np.float32)]))
    np.testing.assert_allclose(image[0, 0], VIRIDIS[0.5], atol=1)
    assert colour_limits(np.zeros((3, 2))) is None
    dead = np.asarray(heatmap([np.zeros(3, np.float32)]))
    assert (dead[:3 * 8:8, 0] == DEAD).all()  # 8 pixel rows a neuron
    assert (_legend(dead, 3 * 8) == PAPER).all()  # no limits: no labels


def test_heatmap_writes_the_scale_limits_under_the_strip_in_real_text():
    # The limits are 0.1 and 10 (the test above). Each label's ink, cut to
    # its bounding box, is the same text drawn alone in Pillow's default font.
    image = np.asarray(heatmap([np.array([1e-3] + [0.1] * 9 + [1.0] + [10.0] * 9 + [1e12], np.float32)]))
    legend = _legend(image, 21 * 8)
    width = image.shape[1]
    left, right = legend[:, : width // 2], legend[:, width // 2:]
    np.testing.assert_array_equal(_ink_box(left), _ink_box(_drawn("0.1")))
    np.testing.assert_array_equal(_ink_box(right), _ink_box(_drawn("10")))
    # Anti-aliased, so more than one shade: a real font, not a bitmap.
    assert len(np.unique(_ink_box(left).reshape(-1, 3), axis=0)) > 2
    # At the two ends: the left label starts at the left edge, the right one
    # ends at the right edge.
    assert _columns_with_ink(left).min() <= 1
    assert _columns_with_ink(right).max() >= right.shape[1] - 2


def test_a_written_heat_map_decodes_with_pillow_to_the_colours_of_its_values(tmp_path):
    # Three epochs of five neurons, neurons in rows, epochs in columns. The
    # smallest and the largest value appear twice, so the 5th and 95th
    # percentiles of the 14 positive values are exactly 1e-2 and 1e2: log10
    # -2..2 spans the palette, and 1e-1, 1, 10 land on its quarter stops.
    columns = np.array([
        [1e-2, 1.0, 0.0, 1e2, 1e-1],
        [1e-2, 1.0, 10.0, 1e2, 10 ** 0.5],
        [1e-1, 1.0, 10.0, 10 ** 1.5, 10 ** -0.5],
    ], np.float32)
    writer = SensitivityWriter(tmp_path, num_bins=5)
    for step, vector in enumerate(columns):
        writer.write(step, {"weights": {"dense": vector}}, {"weights": {"dense": vector == 0}})
    writer.finish()  # the last drawing, at step 2 (3 is not a power of 2)
    writer.close()

    loader = EventAccumulator(str(tmp_path / "sensitivity"), size_guidance={"tensors": 0})
    loader.Reload()
    event = loader.Tensors("heatmap_to_weights/dense")[-1]
    assert event.step == 2
    width, height, png = tensor_util.make_ndarray(event.tensor_proto)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.mode == "RGB"
    # 8 pixel rows a neuron (at most 8, 192 in all); columns at least 16
    # wide, and wide enough (128 in all) for the legend's two labels.
    assert picture.size == (int(width), int(height)) == (129, int(height))
    image = np.asarray(picture)

    def cell(neuron, epoch):
        return image[neuron * 8 + 4, epoch * 43 + 21]

    expected = {
        (0, 0): VIRIDIS[0.0], (0, 1): VIRIDIS[0.0], (0, 2): VIRIDIS[0.25],
        (1, 0): VIRIDIS[0.5], (1, 1): VIRIDIS[0.5], (1, 2): VIRIDIS[0.5],
        (2, 0): DEAD, (2, 1): VIRIDIS[0.75], (2, 2): VIRIDIS[0.75],
        (3, 0): VIRIDIS[1.0], (3, 1): VIRIDIS[1.0],
        (4, 0): VIRIDIS[0.25],
    }
    for (neuron, epoch), colour in expected.items():
        np.testing.assert_allclose(cell(neuron, epoch), colour, atol=1, err_msg=f"{neuron, epoch}")
    # Every cell in between follows its value: brighter for larger values.
    live = [(columns[e, n], cell(n, e)) for n in range(5) for e in range(3) if columns[e, n] > 0]
    brightness = [0.2126 * r + 0.7152 * g + 0.0722 * b for _, (r, g, b) in sorted(live, key=lambda v: v[0])]
    assert np.all(np.diff(brightness) >= 0)
    assert max(brightness) == pytest.approx(0.2126 * 253 + 0.7152 * 231 + 0.0722 * 37, abs=1)
    # The legend: dark text at both ends ("0.01" and "1E2"), nothing between.
    legend = _legend(image, 5 * 8)
    ink = _columns_with_ink(legend)
    assert ink.min() <= 1 and ink.max() >= image.shape[1] - 2
    assert legend.min() < 128
    middle = legend[:, image.shape[1] // 2 - 10 : image.shape[1] // 2 + 10]
    assert (middle == PAPER).all()
    assert np.ptp(_columns_with_ink(legend[:, : 64])) > np.ptp(_columns_with_ink(legend[:, 64:]))


def _legend(image, cells_height):
    """The rows under the colour strip (2 white rows, then 6 of the strip)."""
    assert (image[cells_height : cells_height + 2] == PAPER).all()
    assert not (image[cells_height + 2 : cells_height + 8] == PAPER).all(axis=-1).any()
    return image[cells_height + 8:]


def _columns_with_ink(area):
    return np.flatnonzero((area != PAPER).any(axis=-1).any(axis=0))


def _ink_box(area):
    ink = (area != PAPER).any(axis=-1)
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return area[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def _drawn(text):
    """`text` in dark grey on white, in Pillow's default font at 13 pixels."""
    canvas = Image.new("RGB", (100, 40), tuple(PAPER))
    ImageDraw.Draw(canvas).text((10, 10), text, fill=(64, 64, 64), font=ImageFont.load_default(size=13))
    return np.asarray(canvas)
