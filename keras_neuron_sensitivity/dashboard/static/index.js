// The Neurons tab. TensorBoard loads this module in the plugin's iframe and
// calls `render()`. Per layer, one neuron x epoch matrix per shown run, side
// by side on one colour scale; hover a cell for its values, click it for the
// neuron's curve over the epochs.

import {SORTS, deadSince, listRuns, loadLayer, sortOrder, valueAt} from './data.js';
import {cellAt, drawMatrix, legend} from './matrix.js';
import {WRT_COLOURS, drawCurves} from './curve.js';
import {formatValue, logLimits} from './scale.js';

const state = {
  runs: [], // [{run, layers: [{key, wrt: [...]}]}], from the `runs` route
  shown: null, // names of the runs drawn side by side
  known: new Set(), // every run seen so far: a new one is shown when it appears
  wrt: 'weights',
  sort: 'index',
  layerKeys: [], // every layer, in the order the runs list them
  data: new Map(), // run + '\n' + key -> a loaded layer (data.js)
  selected: null, // {run, key, neuron}: the neuron whose curve is shown
};
const dom = {sections: new Map()};

export async function render() {
  document.head.append(element('link', {rel: 'stylesheet', href: './static/style.css'}));
  dom.wrt = element('select', {id: 'wrt'});
  dom.sort = element('select', {id: 'sort'});
  for (const [value, text] of Object.entries(SORTS)) {
    dom.sort.append(element('option', {value}, text));
  }
  dom.wrt.onchange = () => {
    state.wrt = dom.wrt.value;
    drawLayers();
  };
  dom.sort.onchange = () => {
    state.sort = dom.sort.value;
    drawLayers();
  };
  dom.runs = element('span', {id: 'run-choices'});
  const refreshButton = element('button', {id: 'refresh', type: 'button'}, 'Refresh');
  refreshButton.onclick = () => refresh();
  dom.status = element('p', {id: 'status'});
  dom.curve = element('section', {id: 'curve', hidden: true});
  dom.layers = element('main', {id: 'layers'});
  dom.tooltip = element('div', {id: 'tooltip', hidden: true});
  document.body.append(
    element('header', {}, [
      element('h1', {}, 'Neurons'),
      element('p', {className: 'intro'}, [
        'Sensitivity of every neuron (rows) at every logged epoch (columns): the norm of ',
        'the Jacobian of its value with respect to all trainable weights or to the inputs. ',
        'Hover a cell for its value; click it to follow the neuron over the epochs.',
      ]),
      element('div', {className: 'controls'}, [
        element('label', {}, ['Sensitivity to ', dom.wrt]),
        element('label', {}, ['Sort neurons by ', dom.sort]),
        dom.runs,
        refreshButton,
      ]),
      dom.status,
    ]),
    dom.curve,
    dom.layers,
    dom.tooltip,
  );
  await refresh();
}

async function refresh() {
  document.body.dataset.state = 'loading';
  dom.status.textContent = 'Loading…';
  try {
    state.runs = await listRuns();
  } catch (error) {
    dom.status.textContent = `Could not list the runs: ${error.message}`;
    document.body.dataset.state = 'error';
    return;
  }
  const names = state.runs.map((r) => r.run);
  state.shown = new Set(names.filter((n) => !state.known.has(n) || (state.shown && state.shown.has(n))));
  state.known = new Set([...state.known, ...names]);
  state.layerKeys = [...new Set(state.runs.flatMap((r) => r.layers.map((l) => l.key)))];
  const wrts = ['weights', 'inputs'].filter((w) => state.runs.some((r) => r.layers.some((l) => l.wrt.includes(w))));
  if (wrts.length && !wrts.includes(state.wrt)) state.wrt = wrts[0];
  dom.wrt.replaceChildren(...wrts.map((w) => element('option', {value: w, selected: w === state.wrt}, w)));
  drawRunChoices();
  if (!state.runs.length) {
    dom.status.textContent =
      'No per-neuron sensitivities in this log directory yet: add a NeuronSensitivityCallback ' +
      'to model.fit and refresh once an epoch has been logged.';
    dom.layers.replaceChildren();
    document.body.dataset.state = 'empty';
    return;
  }
  drawLayers();
  const jobs = state.runs.flatMap((r) => r.layers.map((l) => [r.run, l.key]));
  const failed = [];
  await inParallel(jobs, 4, async ([run, key]) => {
    try {
      state.data.set(run + '\n' + key, await loadLayer(run, key));
    } catch (error) {
      failed.push(`${run} ${key}: ${error.message}`);
    }
    drawLayer(key);
  });
  const neurons = state.layerKeys.reduce((total, key) => {
    const data = state.data.get(state.runs.find((r) => r.layers.some((l) => l.key === key)).run + '\n' + key);
    const series = data && Object.values(data.wrt)[0];
    return total + (series ? series.neurons : 0);
  }, 0);
  dom.status.textContent =
    `${state.runs.length} run${state.runs.length > 1 ? 's' : ''}, ${state.layerKeys.length} layers, ` +
    `${neurons} neurons.` + (failed.length ? ` Could not load: ${failed.join('; ')}` : '');
  if (state.selected) drawCurve();
  document.body.dataset.state = 'ready';
}

function drawRunChoices() {
  const boxes = state.runs.map(({run}) => {
    const box = element('input', {type: 'checkbox', checked: state.shown.has(run), value: run});
    box.onchange = () => {
      if (box.checked) state.shown.add(run);
      else state.shown.delete(run);
      drawLayers();
      if (state.selected) drawCurve();
    };
    return element('label', {className: 'run-choice'}, [box, run]);
  });
  dom.runs.replaceChildren(...(boxes.length > 1 ? ['Runs: ', ...boxes] : []));
}

function drawLayers() {
  dom.layers.replaceChildren();
  dom.sections.clear();
  for (const key of state.layerKeys) drawLayer(key);
}

/** One layer: its name, its colour scale, and a matrix per shown run. */
function drawLayer(key) {
  let section = dom.sections.get(key);
  if (!section) {
    section = element('section', {className: 'layer'});
    section.dataset.layer = key;
    dom.sections.set(key, section);
    dom.layers.append(section);
  }
  const runs = state.runs.filter((r) => state.shown.has(r.run) && r.layers.some((l) => l.key === key));
  const serieses = runs
    .map((r) => state.data.get(r.run + '\n' + key))
    .map((data) => data && data.wrt[state.wrt])
    .filter(Boolean);
  const limits = logLimits(serieses.flatMap((s) => s.values));
  const panels = element('div', {className: 'panels'});
  for (const {run} of runs) panels.append(panel(run, key, limits));
  section.replaceChildren(
    element('div', {className: 'layer-head'}, [element('h2', {}, key), legend(limits)]),
    panels,
  );
}

function panel(run, key, limits) {
  const box = element('div', {className: 'panel'});
  box.dataset.run = run;
  box.append(element('h3', {}, run));
  const data = state.data.get(run + '\n' + key);
  const series = data && data.wrt[state.wrt];
  if (!data) {
    box.append(element('p', {className: 'note'}, 'loading…'));
    return box;
  }
  if (!series) {
    box.append(element('p', {className: 'note'}, `not logged to ${state.wrt}`));
    return box;
  }
  const last = series.steps.length - 1;
  const dead = deadSince(series).filter((s) => s !== null).length;
  const estimated = series.errors.filter(Boolean).length;
  box.append(element('p', {className: 'caption'}, [
    `${series.neurons} neurons × ${series.steps.length} logged epochs; `,
    element('span', {className: 'dead-count'}, `${dead} dead`),
    ` at epoch ${series.steps[last]}`,
    estimated ? `; estimated at ${estimated} of them` : '',
  ]));
  const order = sortOrder(series, state.sort);
  const canvas = element('canvas', {className: 'matrix'});
  const selected = state.selected && state.selected.run === run && state.selected.key === key
    ? state.selected.neuron : null;
  const yTitle = state.sort === 'index' ? 'neuron' : 'neuron (sorted)';
  const geo = drawMatrix(canvas, series, order, limits, yTitle, selected);
  // Where the cells are, and which neuron each row is, for scripts and tests.
  Object.assign(canvas.dataset, {
    x0: geo.x0, top: geo.top, cellWidth: geo.cw, cellHeight: geo.ch, order: order.join(','),
  });
  const under = (event) => cellAt(geo, event.offsetX, event.offsetY);
  canvas.onmousemove = (event) => {
    const cell = under(event);
    if (cell) showTooltip(event, run, key, series, order[cell.row], cell.col);
    else dom.tooltip.hidden = true;
  };
  canvas.onmouseleave = () => {
    dom.tooltip.hidden = true;
  };
  canvas.onclick = (event) => {
    const cell = under(event);
    if (!cell) return;
    const previous = state.selected;
    state.selected = {run, key, neuron: order[cell.row]};
    if (previous && previous.key !== key) drawLayer(previous.key);
    drawLayer(key);
    drawCurve();
  };
  box.append(element('div', {className: 'matrix-box'}, canvas));
  return box;
}

/** "layer, neuron, epoch, value, method", beside the mouse. */
function showTooltip(event, run, key, series, neuron, col) {
  const value = valueAt(series, col, neuron);
  const error = series.errors[col] ? series.errors[col][neuron] : null;
  const step = series.steps[col];
  const method = error === null ? series.methods[col] : `${series.methods[col]} ± ${formatValue(error)}`;
  const tip = dom.tooltip;
  tip.replaceChildren(
    element('div', {}, [
      element('b', {className: 'layer'}, key), ', ',
      element('span', {className: 'neuron'}, `neuron ${neuron}`), ', ',
      element('span', {className: 'epoch'}, `epoch ${step}`), ', ',
      element('span', {className: 'value'}, `value ${formatValue(value)}${value === 0 ? ' (dead)' : ''}`), ', ',
      element('span', {className: 'method'}, method),
    ]),
    element('div', {className: 'where'}, `run ${run}, sensitivity to ${state.wrt}`),
  );
  Object.assign(tip.dataset, {
    run, layer: key, wrt: state.wrt, neuron: String(neuron), epoch: String(step),
    value: String(value), method: series.methods[col], error: error === null ? '' : String(error),
  });
  tip.hidden = false;
  const x = event.clientX + 14;
  const y = event.clientY + 14;
  tip.style.left = `${Math.min(x, window.innerWidth - tip.offsetWidth - 4)}px`;
  tip.style.top = `${y + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 8 : y}px`;
}

/** The selected neuron over the epochs: to weights and to inputs, every shown run. */
function drawCurve() {
  const {run, key, neuron} = state.selected;
  const runs = [run, ...state.runs.map((r) => r.run).filter((r) => r !== run && state.shown.has(r))];
  const lines = [];
  const keyItems = [];
  for (const name of runs) {
    const data = state.data.get(name + '\n' + key);
    if (!data) continue;
    for (const wrt of ['weights', 'inputs']) {
      const series = data.wrt[wrt];
      if (!series || neuron >= series.neurons) continue;
      const dashed = name !== run;
      lines.push({
        colour: WRT_COLOURS[wrt],
        dashed,
        steps: series.steps,
        values: series.values.map((_, col) => valueAt(series, col, neuron)),
        errors: series.errors.map((e) => (e ? e[neuron] : null)),
      });
      const sample = element('i', {className: dashed ? 'dashed' : ''});
      sample.style.borderColor = WRT_COLOURS[wrt];
      keyItems.push(element('span', {className: 'curve-key'}, [sample, `${name}, to ${wrt}`]));
    }
  }
  const canvas = element('canvas', {className: 'curve'});
  drawCurves(canvas, lines);
  const close = element('button', {type: 'button', className: 'close', title: 'Close'}, '×');
  close.onclick = () => {
    const previous = state.selected;
    state.selected = null;
    dom.curve.hidden = true;
    drawLayer(previous.key);
  };
  const title = element('h2', {}, `${key}, neuron ${neuron}`);
  Object.assign(dom.curve.dataset, {run, layer: key, neuron: String(neuron)});
  dom.curve.replaceChildren(
    element('div', {className: 'curve-head'}, [title, element('span', {className: 'note'}, `run ${run}`), close]),
    element('div', {className: 'curve-body'}, [
      canvas,
      element('div', {}, [
        element('div', {className: 'curve-keys'}, keyItems),
        element('p', {className: 'note'}, 'Dead epochs: magenta marks at the bottom; NaN or Inf: grey marks at the top; bars: ± the estimator\'s standard error.'),
        valuesTable(run, key, neuron),
      ]),
    ]),
  );
  dom.curve.hidden = false;
}

/** The clicked run's numbers behind the curve, one row per logged epoch. */
function valuesTable(run, key, neuron) {
  const data = state.data.get(run + '\n' + key);
  const wrts = ['weights', 'inputs'].filter((w) => data.wrt[w] && neuron < data.wrt[w].neurons);
  const steps = [...new Set(wrts.flatMap((w) => data.wrt[w].steps))].sort((a, b) => a - b);
  const rows = steps.map((step) => {
    const row = element('tr', {}, element('td', {}, String(step)));
    row.dataset.epoch = String(step);
    for (const wrt of wrts) {
      const series = data.wrt[wrt];
      const col = series.steps.indexOf(step);
      const cell = element('td');
      if (col >= 0) {
        const value = valueAt(series, col, neuron);
        const error = series.errors[col] ? series.errors[col][neuron] : null;
        cell.textContent = formatValue(value) + (error === null ? '' : ` ± ${formatValue(error)}`) +
          (value === 0 ? ' (dead)' : '');
        cell.title = series.methods[col];
        Object.assign(cell.dataset, {wrt, value: String(value)});
      }
      row.append(cell);
    }
    return row;
  });
  const head = element('tr', {}, [element('th', {}, 'epoch'), ...wrts.map((w) => element('th', {}, `to ${w}`))]);
  return element('details', {className: 'values'}, [
    element('summary', {}, 'values'),
    element('table', {}, [element('thead', {}, head), element('tbody', {}, rows)]),
  ]);
}

async function inParallel(items, width, work) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({length: Math.min(width, items.length)}, worker));
}

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...(Array.isArray(children) ? children : [children]));
  return node;
}
