// One run's neuron x epoch matrix for one layer: rows are neurons (in the
// chosen order), columns the logged epochs, drawn on a canvas with labelled
// axes, a gutter that marks neurons dead at the last epoch, and the layer's
// colour scale (`legend`).

import {valueAt} from './data.js';
import {DEAD, NONFINITE, cellColour, colourAt, formatValue, rgb, HIGH_QUANTILE, LOW_QUANTILE} from './scale.js';

const LEFT = 58; // y tick labels and the axis title
const GUTTER = 6; // dead-at-the-end marks
const TOP = 6;
const BOTTOM = 38; // x tick labels and the axis title
const RIGHT = 10;
const FONT = '11px sans-serif';

function clamp(x, low, high) {
  return Math.min(Math.max(x, low), high);
}

/** Where everything goes: cells are `cw` x `ch` pixels from `(x0, TOP)`. */
export function geometry(series) {
  const cols = series.values.length;
  const rows = series.neurons;
  const cw = clamp(Math.floor(360 / cols), 3, 28);
  const ch = clamp(Math.floor(320 / rows), 1, 12);
  const x0 = LEFT + GUTTER + 2;
  return {
    cols, rows, cw, ch, x0, top: TOP,
    width: x0 + cols * cw + RIGHT,
    height: TOP + rows * ch + BOTTOM,
  };
}

/** The `{row, col}` under canvas coordinates `(x, y)`, or null. */
export function cellAt(geo, x, y) {
  const col = Math.floor((x - geo.x0) / geo.cw);
  const row = Math.floor((y - geo.top) / geo.ch);
  if (col < 0 || col >= geo.cols || row < 0 || row >= geo.rows) return null;
  return {row, col};
}

/**
 * Draws the matrix; returns its geometry.
 * @param {HTMLCanvasElement} canvas
 * @param {object} series one `wrt` of a layer (data.js)
 * @param {Int32Array} order the neuron of each row
 * @param {?{low: number, high: number}} limits the layer's colour scale
 * @param {string} yTitle what the rows are sorted by
 * @param {?number} selected a neuron to outline
 */
export function drawMatrix(canvas, series, order, limits, yTitle, selected) {
  const geo = geometry(series);
  const context = setUp(canvas, geo.width, geo.height);

  // The cells at one pixel each, then scaled up without smoothing: fast for
  // tens of thousands of neurons, and sharp.
  const cells = new ImageData(geo.cols, geo.rows);
  const marks = new ImageData(1, geo.rows);
  const last = geo.cols - 1;
  for (let row = 0; row < geo.rows; row++) {
    const neuron = order[row];
    for (let col = 0; col < geo.cols; col++) {
      const colour = cellColour(valueAt(series, col, neuron), limits);
      const at = 4 * (row * geo.cols + col);
      cells.data[at] = colour[0]; // a Uint8ClampedArray rounds
      cells.data[at + 1] = colour[1];
      cells.data[at + 2] = colour[2];
      cells.data[at + 3] = 255;
    }
    const dead = valueAt(series, last, neuron) === 0;
    marks.data.set(dead ? [...DEAD, 255] : [0, 0, 0, 0], 4 * row);
  }
  const scratch = document.createElement('canvas');
  scratch.width = geo.cols + 1;
  scratch.height = geo.rows;
  scratch.getContext('2d').putImageData(cells, 0, 0);
  scratch.getContext('2d').putImageData(marks, geo.cols, 0);
  context.imageSmoothingEnabled = false;
  const height = geo.rows * geo.ch;
  context.drawImage(scratch, 0, 0, geo.cols, geo.rows, geo.x0, geo.top, geo.cols * geo.cw, height);
  context.drawImage(scratch, geo.cols, 0, 1, geo.rows, LEFT, geo.top, GUTTER, height);

  context.strokeStyle = '#555';
  context.lineWidth = 1;
  context.strokeRect(geo.x0 - 0.5, geo.top - 0.5, geo.cols * geo.cw + 1, height + 1);

  context.fillStyle = '#333';
  context.font = FONT;
  // y ticks: the neuron drawn in that row, about every 28 pixels.
  context.textAlign = 'right';
  context.textBaseline = 'middle';
  const rowStep = Math.max(1, Math.ceil(28 / geo.ch));
  for (let row = 0; row < geo.rows; row += rowStep) {
    const y = geo.top + (row + 0.5) * geo.ch;
    context.fillText(String(order[row]), LEFT - 4, y);
    context.fillRect(LEFT - 2, Math.round(y), 2, 1);
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
  context.fillText('epoch', geo.x0 + (geo.cols * geo.cw) / 2, axisY + 19);
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
      context.strokeRect(geo.x0 - 3, geo.top + row * geo.ch - 2, geo.cols * geo.cw + 6, geo.ch + 4);
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

/** The colour scale of a layer: its limits, and the dead and NaN swatches. */
export function legend(limits) {
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
