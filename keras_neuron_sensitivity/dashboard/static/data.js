// What the plugin's routes return, and the per-neuron orders the page sorts by.
// A layer's series for one metric: `steps` (the logged epochs shown),
// `loggedSteps` (how many there are), `values[col]` a Float32Array over
// neurons, `errors[col]` the same or null (exact values), `methods[col]` the
// method's text, `frozen[col]` a Uint8Array (1: nothing trainable upstream)
// or null, and `status[col]` a Float32Array of status codes (`STATUSES`) or
// null where the run has no neuron health. A metric is a sensitivity
// (`weights`, `inputs`) or a statistic of the neuron health (`mean_abs`,
// `tau_score`, `firing_rate`, `utility`).

// At most this many logged epochs per matrix, spread evenly from the first
// to the last: 3 pixels a column (the least a hover can aim at) fill 768.
export const MAX_COLUMNS = 256;

// What the status codes of the `activity/{key}` tensors mean
// (keras_neuron_sensitivity/health.py, `STATUSES`).
export const STATUSES = ['frozen', 'dead', 'dormant', 'saturated', 'active'];

export const METRICS = {
  weights: 'sensitivity to weights',
  inputs: 'sensitivity to inputs',
  mean_abs: 'mean |activation|',
  tau_score: 'τ-score (dormancy)',
  firing_rate: 'firing rate',
  utility: 'utility',
};
export const SENSITIVITIES = ['weights', 'inputs'];

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${url}: ${response.status} ${await response.text()}`);
  }
  return response;
}

/** `[{run, layers: [{key, wrt: [...]}]}]`: the runs with per-neuron values. */
export async function listRuns() {
  return (await (await fetchOk('./runs')).json()).runs;
}

/**
 * One layer of one run from the binary `matrix` route (its layout is in
 * plugin.py): `{run, key, heads, wrt: {weights: series, inputs: series}}`.
 */
export async function loadLayer(run, key) {
  const query = new URLSearchParams({run, layer: key, max_steps: MAX_COLUMNS});
  const buffer = await (await fetchOk('./matrix?' + query)).arrayBuffer();
  const length = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const body = 4 + length;
  const wrt = {};
  for (const [name, raw] of Object.entries(header.wrt)) {
    const n = raw.neurons;
    const columns = (at, Type, listed) => {
      const out = raw.steps.map(() => null);
      let offset = body + at;
      for (const col of listed) {
        out[col] = new Type(buffer, offset, n[col]);
        offset += n[col] * Type.BYTES_PER_ELEMENT;
      }
      return out;
    };
    const all = raw.steps.map((_, col) => col);
    wrt[name] = {
      steps: raw.steps,
      loggedSteps: raw.logged_steps,
      values: columns(raw.values, Float32Array, all),
      errors: raw.errors ? columns(raw.errors.offset, Float32Array, raw.errors.columns) : raw.steps.map(() => null),
      frozen: raw.frozen ? columns(raw.frozen.offset, Uint8Array, raw.frozen.columns) : null,
      methods: raw.methods,
      neurons: Math.max(0, ...n),
    };
  }
  return {run: header.run, key: header.layer, heads: header.heads, wrt, activity: readActivity(header.activity, buffer, body)};
}

/**
 * The neuron health of a layer from the `matrix` route: `{steps, loggedSteps,
 * thresholds, neurons, fields: {field: [Float32Array per col]}}`, or null.
 */
function readActivity(raw, buffer, body) {
  if (!raw) return null;
  const fields = {};
  for (const name of raw.fields) fields[name] = [];
  let offset = body + raw.offset;
  raw.steps.forEach((_, col) => {
    const n = raw.neurons[col];
    for (const name of raw.fields) {
      fields[name].push(new Float32Array(buffer, offset, n));
      offset += 4 * n;
    }
  });
  return {
    steps: raw.steps, loggedSteps: raw.logged_steps, thresholds: raw.thresholds,
    neurons: Math.max(0, ...raw.neurons), fields,
  };
}

/**
 * The series of one metric of a loaded layer (see the top of this file), or
 * null when the layer has no such data. Sensitivities carry the statuses
 * of the neuron health logged at the same epochs.
 */
export function metricSeries(data, metric) {
  const activity = data.activity;
  if (SENSITIVITIES.includes(metric)) {
    const series = data.wrt[metric];
    if (!series) return null;
    if (!series.status) {
      const at = new Map(activity ? activity.steps.map((s, col) => [s, col]) : []);
      series.status = series.steps.map((s) => (at.has(s) ? activity.fields.status[at.get(s)] : null));
    }
    return series;
  }
  if (!activity || !activity.fields[metric]) return null;
  const key = 'series_' + metric;
  if (!activity[key]) {
    activity[key] = {
      steps: activity.steps,
      loggedSteps: activity.loggedSteps,
      values: activity.fields[metric],
      errors: activity.steps.map(() => null),
      methods: activity.steps.map(() => 'measured on the probe batch'),
      frozen: null,
      status: activity.fields.status,
      neurons: activity.neurons,
      activity: true,
    };
  }
  return activity[key];
}

/** A neuron's status at a column (`STATUSES`), or null when not logged. */
export function statusAt(series, col, neuron) {
  const codes = series.status && series.status[col];
  if (!codes || neuron >= codes.length) return null;
  return STATUSES[codes[neuron]] || null;
}

/**
 * What a cell shows: 'nan', 'frozen', 'dead', 'saturated', 'dormant' or
 * 'value'. For a sensitivity, dead and frozen come from its own zeros (dead
 * to the inputs is zero to the inputs), dormant and saturated from the
 * status logged at that epoch; a saturated neuron (its activation flat where
 * it fires: a ReLU6 capped at 6) may have a sensitivity of exactly 0 and is
 * drawn saturated. For a statistic of the neuron health, the status decides.
 */
export function cellState(series, col, neuron) {
  const value = valueAt(series, col, neuron);
  const status = statusAt(series, col, neuron);
  if (series.activity) {
    if (status === 'dead' || status === 'saturated' || status === 'dormant') return status;
    return Number.isFinite(value) ? 'value' : 'nan';
  }
  if (!Number.isFinite(value)) return 'nan';
  if (frozenAt(series, col, neuron)) return 'frozen';
  if (status === 'saturated') return 'saturated';
  if (value === 0) return 'dead';
  if (status === 'dormant') return 'dormant';
  return 'value';
}

/** A neuron's value at a column, NaN where that step has no such neuron. */
export function valueAt(series, col, neuron) {
  const vector = series.values[col];
  return neuron < vector.length ? vector[neuron] : NaN;
}

/**
 * Whether a neuron has nothing trainable upstream at a column: its
 * sensitivity to weights is exactly 0, but it is not dead.
 */
export function frozenAt(series, col, neuron) {
  const mask = series.frozen && series.frozen[col];
  return Boolean(mask && mask[neuron]) && valueAt(series, col, neuron) === 0;
}

/**
 * Dead: exactly 0, with something trainable upstream, and not saturated
 * (for a statistic of the neuron health: its logged status).
 */
export function deadAt(series, col, neuron) {
  return cellState(series, col, neuron) === 'dead';
}

/**
 * Per neuron, the first logged epoch of its final dormant streak (dormant
 * at the last epoch and at every epoch since), or null.
 */
export function dormantSince(series) {
  const last = series.values.length - 1;
  const since = [];
  for (let neuron = 0; neuron < series.neurons; neuron++) {
    let col = last;
    while (col >= 0 && statusAt(series, col, neuron) === 'dormant') col--;
    since.push(col === last ? null : series.steps[col + 1]);
  }
  return since;
}

/**
 * Per neuron, the first logged epoch of its final dead streak (dead at the
 * last epoch and at every epoch since), or null when alive at the end: as
 * the `report` command's "dead since". Neurons with nothing trainable
 * upstream are not dead.
 */
export function deadSince(series) {
  const last = series.values.length - 1;
  const since = [];
  for (let neuron = 0; neuron < series.neurons; neuron++) {
    let col = last;
    while (col >= 0 && deadAt(series, col, neuron)) col--;
    since.push(col === last ? null : series.steps[col + 1]);
  }
  return since;
}

export const SORTS = {
  index: 'neuron index',
  last: 'last value shown (largest first)',
  ...Object.fromEntries(Object.entries(METRICS).map(([m, text]) => [`last:${m}`, `last ${text} (largest first)`])),
  death: 'first epoch of death (longest dead first)',
  dormancy: 'first epoch of dormancy (longest dormant first)',
  change: 'change, first to last epoch (largest first)',
};

/**
 * The order of the rows: `order[row]` is the neuron drawn in that row.
 * Ties keep the neuron index order. Non-finite values sort last. With
 * `groupSize` (an attention-context site's head_dim), neurons are sorted
 * within each head, and the heads stay in their order. `other(metric)`
 * gives another metric's series of the same layer (for `last:<metric>`).
 */
export function sortOrder(series, how, groupSize = 0, other = () => null) {
  const neurons = Array.from({length: series.neurons}, (_, i) => i);
  const last = series.values.length - 1;
  let key; // larger first; -Infinity last
  if (how === 'last') {
    key = (n) => finiteOr(valueAt(series, last, n), -Infinity);
  } else if (how.startsWith('last:')) {
    const by = other(how.slice(5));
    const end = by ? by.values.length - 1 : -1;
    key = (n) => (by && n < by.neurons ? finiteOr(valueAt(by, end, n), -Infinity) : -Infinity);
  } else if (how === 'death') {
    const since = deadSince(series);
    key = (n) => (since[n] === null ? -Infinity : -since[n]);
  } else if (how === 'dormancy') {
    const since = dormantSince(series);
    key = (n) => (since[n] === null ? -Infinity : -since[n]);
  } else if (how === 'change') {
    key = (n) => change(valueAt(series, 0, n), valueAt(series, last, n));
  } else {
    return Int32Array.from(neurons);
  }
  const keys = neurons.map(key);
  const group = (n) => (groupSize ? Math.floor(n / groupSize) : 0);
  neurons.sort((a, b) => (group(a) - group(b)) || (keys[b] - keys[a]) || (a - b));
  return Int32Array.from(neurons);
}

/**
 * How far a neuron moved from the first to the last logged epoch: the size
 * of the change of log10 of its value; dying or reviving (0 at one end
 * only) is the largest change of all.
 */
export function change(first, last) {
  if (!Number.isFinite(first) || !Number.isFinite(last)) return -Infinity;
  if (first === 0 && last === 0) return 0;
  if (first === 0 || last === 0) return Infinity;
  return Math.abs(Math.log10(last) - Math.log10(first));
}

function finiteOr(value, otherwise) {
  return Number.isFinite(value) ? value : otherwise;
}
