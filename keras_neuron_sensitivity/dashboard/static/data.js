// What the plugin's routes return, and the per-neuron orders the page sorts by.
// A layer's series for one `wrt`: `steps` (the logged epochs), `values[col]`
// a Float64Array over neurons, `errors[col]` the same or null (exact values),
// `methods[col]` the method's text.

async function fetchJSON(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${url}: ${response.status} ${await response.text()}`);
  }
  return response.json();
}

/** `[{run, layers: [{key, wrt: [...]}]}]`: the runs with per-neuron values. */
export async function listRuns() {
  return (await fetchJSON('./runs')).runs;
}

/** One layer of one run: `{run, key, wrt: {weights: series, inputs: series}}`. */
export async function loadLayer(run, key) {
  const json = await fetchJSON('./layer?' + new URLSearchParams({run, layer: key}));
  const wrt = {};
  for (const [name, raw] of Object.entries(json.wrt)) {
    const values = raw.values.map(toNumbers);
    wrt[name] = {
      steps: raw.steps,
      values,
      errors: raw.errors.map((e) => (e ? toNumbers(e) : null)),
      methods: raw.methods,
      neurons: Math.max(0, ...values.map((v) => v.length)),
    };
  }
  return {run: json.run, key: json.layer, wrt};
}

// Non-finite values arrive as the strings "NaN", "Infinity", "-Infinity".
function toNumbers(list) {
  return Float64Array.from(list, Number);
}

/** A neuron's value at a column, NaN where that step has no such neuron. */
export function valueAt(series, col, neuron) {
  const vector = series.values[col];
  return neuron < vector.length ? vector[neuron] : NaN;
}

/**
 * Per neuron, the first logged epoch of its final dead streak (dead at the
 * last epoch and at every epoch since), or null when alive at the end: as
 * the `report` command's "dead since".
 */
export function deadSince(series) {
  const last = series.values.length - 1;
  const since = [];
  for (let neuron = 0; neuron < series.neurons; neuron++) {
    let col = last;
    while (col >= 0 && valueAt(series, col, neuron) === 0) col--;
    since.push(col === last ? null : series.steps[col + 1]);
  }
  return since;
}

export const SORTS = {
  index: 'neuron index',
  last: 'last value (largest first)',
  death: 'first epoch of death (longest dead first)',
  change: 'change, first to last epoch (largest first)',
};

/**
 * The order of the rows: `order[row]` is the neuron drawn in that row.
 * Ties keep the neuron index order. Non-finite values sort last.
 */
export function sortOrder(series, how) {
  const neurons = Array.from({length: series.neurons}, (_, i) => i);
  const last = series.values.length - 1;
  let key; // larger first; -Infinity last
  if (how === 'last') {
    key = (n) => finiteOr(valueAt(series, last, n), -Infinity);
  } else if (how === 'death') {
    const since = deadSince(series);
    key = (n) => (since[n] === null ? -Infinity : -since[n]);
  } else if (how === 'change') {
    key = (n) => change(valueAt(series, 0, n), valueAt(series, last, n));
  } else {
    return Int32Array.from(neurons);
  }
  const keys = neurons.map(key);
  neurons.sort((a, b) => (keys[b] - keys[a]) || (a - b));
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
