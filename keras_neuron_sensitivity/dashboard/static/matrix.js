// One run's neuron x epoch matrix for one layer: rows are neurons (in the
// chosen order), columns the logged epochs, drawn on a canvas with labelled
// axes, a gutter that marks neurons dead at the last epoch, and the layer's
// colour scale (`legend`). An attention-context site's rows come in heads,
// with a separator between two heads.

import {cellState, valueAt} from './data.js';
import {
  DEAD, DORMANT, FROZEN, NONFINITE, SATURATED, colourAt, formatValue, rgb, stateColour, HIGH_QUANTILE, LOW_QUANTILE,
} from './scale.js';

// The left margin marks a neuron's state at the last epoch.
const MARKS = {dead: DEAD, dormant: DORMANT, saturated: SATURATED};

const LEFT = 58; // y tick labels and the axis title
const GUTTER = 6; // dead-at-the-end marks
const TOP = 6;
const BOTTOM = 38; // x tick labels and the axis title
const RIGHT = 10;
const HEAD_GAP = 3; // pixels between two heads, a grey line in the middle
const FONT = '11px sans-serif';

function clamp(x, low, high) {
  return Math.min(Math.max(x, low), high);
}

/**
 * Where everything goes: cells are `cw` x `ch` pixels from `(x0, top)`,
 * rows in groups of `groupSize` (a head's channels; every row otherwise)
 * with `gap` pixels between two groups.
 */
export function geometry(series, groupSize = 0) {
  const cols = series.values.length;
  const rows = series.neurons;
  const cw = clamp(Math.floor(360 / cols), 3, 28);
  const ch = clamp(Math.floor(320 / rows), 1, 12);
  const x0 = LEFT + GUTTER + 2;
  const size = groupSize || Math.max(rows, 1);
  const gap = groupSize ? HEAD_GAP : 0;
  const groups = Math.max(1, Math.ceil(rows / size));
  const bodyHeight = rows * ch + (groups - 1) * gap;
  return {
    cols, rows, cw, ch, x0, top: TOP, groupSize: size, gap, bodyHeight,
    width: x0 + cols * cw + RIGHT,
    height: TOP + bodyHeight + BOTTOM,
  };
}

/** The y of a row's top edge. */
export function rowTop(geo, row) {
  return geo.top + row * geo.ch + Math.floor(row / geo.groupSize) * geo.gap;
}

/** The `{row, col}` under canvas coordinates `(x, y)`, or null (also in a gap). */
export function cellAt(geo, x, y) {
  const col = Math.floor((x - geo.x0) / geo.cw);
  const span = geo.groupSize * geo.ch + geo.gap;
  const group = Math.floor((y - geo.top) / span);
  const within = y - geo.top - group * span;
  if (within >= geo.groupSize * geo.ch) return null;
  const row = group * geo.groupSize + Math.floor(within / geo.ch);
  if (col < 0 || col >= geo.cols || row < 0 || row >= geo.rows) return null;
  return {row, col};
}

/**
 * Draws the matrix; returns its geometry.
 * @param {HTMLCanvasElement} canvas
 * @param {object} series one `wrt` of a layer (data.js)
 * @param {Int32Array} order the neuron of each row
 * @param {?{low: number, high: number}} limits the layer's colour scale
 * @param {{yTitle: string, selected: ?number, groupSize: number,
 *     statusColours: boolean}} options what the rows are sorted by, a
 *     neuron to outline, head_dim for an attention-context site (0
 *     otherwise), and whether dormant and saturated cells take their colours
 */
export function drawMatrix(canvas, series, order, limits, {yTitle, selected = null, groupSize = 0, statusColours = true}) {
  const geo = geometry(series, groupSize);
  const context = setUp(canvas, geo.width, geo.height);

  // The cells at one pixel each, then scaled up without smoothing: fast for
  // tens of thousands of neurons, and sharp.
  const cells = new ImageData(geo.cols, Math.max(geo.rows, 1));
  const marks = new ImageData(1, Math.max(geo.rows, 1));
  const last = geo.cols - 1;
  for (let row = 0; row < geo.rows; row++) {
    const neuron = order[row];
    for (let col = 0; col < geo.cols; col++) {
      const state = cellState(series, col, neuron);
      const colour = stateColour(state, valueAt(series, col, neuron), limits, statusColours);
      const at = 4 * (row * geo.cols + col);
      cells.data[at] = colour[0]; // a Uint8ClampedArray rounds
      cells.data[at + 1] = colour[1];
      cells.data[at + 2] = colour[2];
      cells.data[at + 3] = 255;
    }
    const mark = MARKS[cellState(series, last, neuron)];
    marks.data.set(mark ? [...mark, 255] : [0, 0, 0, 0], 4 * row);
  }
  const scratch = document.createElement('canvas');
  scratch.width = geo.cols + 1;
  scratch.height = Math.max(geo.rows, 1);
  scratch.getContext('2d').putImageData(cells, 0, 0);
  scratch.getContext('2d').putImageData(marks, geo.cols, 0);
  context.imageSmoothingEnabled = false;
  const matrixWidth = geo.cols * geo.cw;
  context.fillStyle = '#999';
  for (let first = 0; first < geo.rows; first += geo.groupSize) {
    const count = Math.min(geo.groupSize, geo.rows - first);
    const y = rowTop(geo, first);
    context.drawImage(scratch, 0, first, geo.cols, count, geo.x0, y, matrixWidth, count * geo.ch);
    context.drawImage(scratch, geo.cols, first, 1, count, LEFT, y, GUTTER, count * geo.ch);
    if (first > 0) context.fillRect(geo.x0, y - Math.ceil(geo.gap / 2), matrixWidth, 1);
  }
  const height = geo.bodyHeight;

  context.strokeStyle = '#555';
  context.lineWidth = 1;
  context.strokeRect(geo.x0 - 0.5, geo.top - 0.5, matrixWidth + 1, height + 1);

  context.fillStyle = '#333';
  context.font = FONT;
  context.textAlign = 'right';
  context.textBaseline = 'middle';
  if (groupSize) {
    // y ticks: the head of each group, as many as fit 14 pixels apart.
    const span = geo.groupSize * geo.ch + geo.gap;
    const every = Math.max(1, Math.ceil(14 / span));
    for (let head = 0; head * geo.groupSize < geo.rows; head += every) {
      const y = rowTop(geo, head * geo.groupSize) + (geo.groupSize * geo.ch) / 2;
      context.fillText(`h${head}`, LEFT - 4, y);
    }
  } else {
    // y ticks: the neuron drawn in that row, about every 28 pixels.
    const rowStep = Math.max(1, Math.ceil(28 / geo.ch));
    for (let row = 0; row < geo.rows; row += rowStep) {
      const y = geo.top + (row + 0.5) * geo.ch;
      context.fillText(String(order[row]), LEFT - 4, y);
      context.fillRect(LEFT - 2, Math.round(y), 2, 1);
    }
  }
  // x ticks: the logged epoch of the column, about every 30 pixels.
  context.textAlign = 'center';
  context.textBaseline = 'top';
  const colStep = Math.max(1, Math.ceil(30 / geo.cw));
  const axisY = geo.top + height + 2;
  for (let col = 0; col < geo.cols; col += colStep) {
    const x = geo.x0 + (col + 0.5) * geo.cw;
    context.fillRect(Math.round(x), axisY, 1, 3);
    context.fillText(String(series.steps[col]), x, axisY + 4);
  }
  context.fillText('epoch', geo.x0 + matrixWidth / 2, axisY + 19);
  context.save();
  context.translate(12, geo.top + height / 2);
  context.rotate(-Math.PI / 2);
  context.textBaseline = 'middle';
  context.fillText(yTitle, 0, 0);
  context.restore();

  if (selected !== null && selected !== undefined) {
    const row = order.indexOf(selected);
    if (row >= 0) {
      context.strokeStyle = '#d62728';
      context.lineWidth = 2;
      context.strokeRect(geo.x0 - 3, rowTop(geo, row) - 2, matrixWidth + 6, geo.ch + 4);
    }
  }
  return geo;
}

/** A canvas of CSS size `width` x `height`, sharp on high-density screens. */
export function setUp(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext('2d');
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  return context;
}

/**
 * The colour scale of a layer: its limits, and the dead and NaN swatches
 * (and the frozen one when the layer has neurons with nothing trainable
 * upstream, the dormant and saturated ones when `health` is true).
 */
export function legend(limits, frozen = false, health = false) {
  const box = document.createElement('div');
  box.className = 'legend';
  if (limits) {
    const low = document.createElement('span');
    low.className = 'legend-low';
    low.textContent = `≤ ${formatValue(10 ** limits.low, 3)}`;
    const bar = document.createElement('canvas');
    const context = setUp(bar, 140, 10);
    for (let x = 0; x < 140; x++) {
      context.fillStyle = rgb(colourAt(x / 139));
      context.fillRect(x, 0, 1, 10);
    }
    const high = document.createElement('span');
    high.className = 'legend-high';
    high.textContent = `≥ ${formatValue(10 ** limits.high, 3)}`;
    box.append(low, bar, high);
    box.title =
      `Log colour scale from the ${LOW_QUANTILE * 100}th to the ${HIGH_QUANTILE * 100}th ` +
      'percentile of the non-zero values shown for this layer; values beyond take the end colours.';
  }
  box.append(swatch(DEAD, 'dead (exactly 0)'), swatch(NONFINITE, 'NaN or Inf'));
  if (frozen) box.append(swatch(FROZEN, 'nothing trainable upstream (0, not dead)'));
  if (health) {
    box.append(swatch(DORMANT, 'dormant (τ-score ≤ τ)'), swatch(SATURATED, 'saturated (fires, flat activation)'));
  }
  return box;
}

function swatch(colour, text) {
  const item = document.createElement('span');
  item.className = 'swatch';
  const square = document.createElement('i');
  square.style.background = rgb(colour);
  item.append(square, text);
  return item;
}
