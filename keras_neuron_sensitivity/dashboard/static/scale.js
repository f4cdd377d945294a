// The colour scale, shared by every matrix of a layer: log10 of the value,
// from its 5th to its 95th percentile over the layer's positive finite values
// (so one outlier cannot push every other cell to one end), on viridis.
// The PNG heat maps that the callback writes use the same rule
// (keras_neuron_sensitivity/tensorboard/pictures.py, `heatmap`).

// Viridis at five stops, as the PNGs: no magenta, which marks dead neurons.
const STOPS = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];
export const DEAD = [255, 0, 255];
export const NONFINITE = [128, 128, 128];
// Nothing trainable upstream: zero to weights, but not dead (as the PNGs).
export const FROZEN = [190, 215, 235];
// Neuron health: dormant (barely active: tau-score at most tau) and
// saturated (firing where its activation is flat), away from viridis's hues.
export const DORMANT = [245, 150, 40];
export const SATURATED = [215, 40, 40];
const STATE_COLOURS = {nan: NONFINITE, frozen: FROZEN, dead: DEAD, dormant: DORMANT, saturated: SATURATED};
export const LOW_QUANTILE = 0.05;
export const HIGH_QUANTILE = 0.95;

/** The colour at `t` in [0, 1] (clipped). */
export function colourAt(t) {
  const position = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1);
  const low = Math.min(Math.floor(position), STOPS.length - 2);
  const frac = position - low;
  return STOPS[low].map((c, i) => c * (1 - frac) + STOPS[low + 1][i] * frac);
}

/** The `q` quantile of sorted numbers, interpolated as numpy's default. */
export function quantile(sorted, q) {
  const position = q * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (position - below);
}

/**
 * `{low, high}` in log10 from every positive finite value of `vectors`
 * (any iterables of numbers), or null when there is none (all dead or NaN).
 */
export function logLimits(vectors) {
  const logs = [];
  for (const vector of vectors) {
    for (const value of vector) {
      if (value > 0 && Number.isFinite(value)) logs.push(Math.log10(value));
    }
  }
  if (!logs.length) return null;
  const sorted = Float64Array.from(logs).sort();
  return {low: quantile(sorted, LOW_QUANTILE), high: quantile(sorted, HIGH_QUANTILE)};
}

/** Where a positive value sits on the scale, in [0, 1]. */
export function position(value, limits) {
  if (limits.high === limits.low) return 0.5; // one value: the middle colour
  return (Math.log10(value) - limits.low) / (limits.high - limits.low);
}

/**
 * The `[r, g, b]` of a cell in state `state` (data.js `cellState`). With
 * `statusColours` off, dormant and saturated cells show their value.
 */
export function stateColour(state, value, limits, statusColours = true) {
  if (state === 'value' || (!statusColours && (state === 'dormant' || state === 'saturated'))) {
    if (!Number.isFinite(value)) return NONFINITE;
    if (!limits) return NONFINITE;
    // A statistic may be 0 without the neuron being dead (a firing rate of
    // 0 for a neuron that only goes negative): the low end of the scale.
    return colourAt(value > 0 ? position(value, limits) : 0);
  }
  return STATE_COLOURS[state];
}

export function rgb(colour) {
  return `rgb(${colour.map(Math.round).join(',')})`;
}

/** A short, readable number: 4 significant digits, exponent when far from 1. */
export function formatValue(value, digits = 4) {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return 'Inf';
  if (value === -Infinity) return '-Inf';
  if (value === 0) return '0';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e-3 && magnitude < 1e4) return String(Number(value.toPrecision(digits)));
  return value.toExponential(digits - 1);
}
