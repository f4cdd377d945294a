// One neuron over the logged epochs: a line per run and metric (its
// sensitivities, to weights and to inputs, and its activity, mean
// |activation| and tau-score) on one log axis, error bars where the
// estimator produced the value, zero (dead) epochs marked on the bottom edge
// (pale blue where nothing trainable is upstream instead) and NaN or Inf on
// the top edge.

import {setUp} from './matrix.js';
import {DEAD, FROZEN, NONFINITE, formatValue, rgb} from './scale.js';

export const METRIC_COLOURS = {
  weights: '#1f77b4', inputs: '#e6550d', mean_abs: '#2ca02c', tau_score: '#9467bd',
  firing_rate: '#8c564b', utility: '#e377c2',
};
const WIDTH = 560;
const HEIGHT = 200;
const LEFT = 64;
const RIGHT = 12;
const TOP = 10;
const BOTTOM = 34;

/**
 * @param {HTMLCanvasElement} canvas
 * @param {Array<{colour: string, dashed: boolean, steps: number[],
 *     values: number[], errors: Array<?number>, frozen: boolean[]}>} lines
 */
export function drawCurves(canvas, lines) {
  const context = setUp(canvas, WIDTH, HEIGHT);
  const steps = lines.flatMap((l) => l.steps);
  const positive = [];
  for (const line of lines) {
    line.values.forEach((v, i) => {
      if (v > 0 && Number.isFinite(v)) {
        const e = line.errors[i] || 0;
        positive.push(v, v + e);
        if (v - e > 0) positive.push(v - e);
      }
    });
  }
  const xMin = Math.min(...steps);
  const xMax = Math.max(...steps);
  let yMin = positive.length ? Math.log10(Math.min(...positive)) : -1;
  let yMax = positive.length ? Math.log10(Math.max(...positive)) : 1;
  if (yMax - yMin < 0.5) {
    const middle = (yMax + yMin) / 2;
    yMin = middle - 0.25;
    yMax = middle + 0.25;
  }
  const plotW = WIDTH - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const x = (step) => LEFT + (xMax === xMin ? plotW / 2 : ((step - xMin) / (xMax - xMin)) * plotW);
  const y = (value) => TOP + (1 - (Math.log10(value) - yMin) / (yMax - yMin)) * plotH;

  context.font = '11px sans-serif';
  context.fillStyle = '#333';
  context.strokeStyle = '#bbb';
  context.lineWidth = 1;
  // y grid at powers of ten (or halves of a decade when the range is small).
  const decade = yMax - yMin > 2 ? 1 : 0.5;
  context.textAlign = 'right';
  context.textBaseline = 'middle';
  for (let p = Math.ceil(yMin / decade) * decade; p <= yMax + 1e-9; p += decade) {
    const py = Math.round(y(10 ** p)) + 0.5;
    context.beginPath();
    context.moveTo(LEFT, py);
    context.lineTo(LEFT + plotW, py);
    context.stroke();
    context.fillText(formatValue(10 ** p, 2), LEFT - 4, py);
  }
  context.textAlign = 'center';
  context.textBaseline = 'top';
  const unique = [...new Set(steps)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(unique.length / 12));
  unique.forEach((step, i) => {
    if (i % every) return;
    context.fillText(String(step), x(step), TOP + plotH + 4);
  });
  context.fillText('epoch', LEFT + plotW / 2, TOP + plotH + 19);
  context.save();
  context.translate(12, TOP + plotH / 2);
  context.rotate(-Math.PI / 2);
  context.textBaseline = 'middle';
  context.fillText('value (log)', 0, 0);
  context.restore();
  context.strokeStyle = '#555';
  context.strokeRect(LEFT - 0.5, TOP - 0.5, plotW + 1, plotH + 1);

  for (const line of lines) {
    context.strokeStyle = line.colour;
    context.fillStyle = line.colour;
    context.lineWidth = 2;
    context.setLineDash(line.dashed ? [6, 4] : []);
    context.beginPath();
    let drawing = false;
    line.steps.forEach((step, i) => {
      const v = line.values[i];
      if (!(v > 0 && Number.isFinite(v))) {
        drawing = false;
        return;
      }
      if (drawing) context.lineTo(x(step), y(v));
      else context.moveTo(x(step), y(v));
      drawing = true;
    });
    context.stroke();
    context.setLineDash([]);
    context.lineWidth = 1;
    line.steps.forEach((step, i) => {
      const v = line.values[i];
      const px = x(step);
      if (v === 0) return marker(context, px, TOP + plotH - 4, line.frozen[i] ? FROZEN : DEAD);
      if (!Number.isFinite(v) || v < 0) return marker(context, px, TOP + 4, NONFINITE);
      const e = line.errors[i];
      if (e) {
        const top = y(v + e);
        const bottom = v - e > 0 ? y(v - e) : TOP + plotH;
        context.beginPath();
        context.moveTo(px, top);
        context.lineTo(px, bottom);
        context.moveTo(px - 3, top);
        context.lineTo(px + 3, top);
        context.stroke();
      }
      context.beginPath();
      context.arc(px, y(v), 2.5, 0, 2 * Math.PI);
      context.fill();
    });
  }
}

function marker(context, x, y, colour) {
  context.save();
  context.fillStyle = rgb(colour);
  context.beginPath();
  context.moveTo(x, y - 4);
  context.lineTo(x + 4, y + 3);
  context.lineTo(x - 4, y + 3);
  context.closePath();
  context.fill();
  context.restore();
}
