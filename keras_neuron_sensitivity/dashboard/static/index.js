// The Neurons tab. TensorBoard loads this module in the plugin's iframe and
// calls `render()`. Per layer, one neuron x epoch matrix per shown run, side
// by side on one colour scale; hover a cell for its values, click it for the
// neuron's curve over the epochs. Layers whose keys have a "/" (a nested
// model's, the sites inside a layer) sit in collapsible groups (tree.js); a
// layer's data is fetched when its matrix comes into view, not before.

import {
  MAX_COLUMNS, METRICS, SENSITIVITIES, SORTS, cellState, deadSince, frozenAt, listRuns, loadLayer,
  metricSeries, sortOrder, statusAt, valueAt,
} from './data.js';
import {cellAt, drawMatrix, legend} from './matrix.js';
import {METRIC_COLOURS, drawCurves} from './curve.js';
import {formatValue, logLimits} from './scale.js';
import {buildTree, filterKeys, isGroup, keysUnder, openByDefault, shortcuts} from './tree.js';

const PARALLEL = 4; // layer requests in flight at once
const KEPT = 64; // loaded layers kept when off the page

const state = {
  phase: 'loading', // 'loading' (the runs), 'error', 'empty' or 'shown'
  runs: [], // [{run, layers: [{key, wrt: [...]}]}], from the `runs` route
  runKeys: new Map(), // run -> Set of its layer keys
  shown: null, // names of the runs drawn side by side
  known: new Set(), // every run seen so far: a new one is shown when it appears
  metric: 'weights', // METRICS: a sensitivity or a statistic of the neuron health
  sort: 'index',
  statusColours: true, // dormant and saturated cells in their colours
  filter: '', // when set, the matching layers in a flat list instead of the tree
  layerKeys: [], // every layer, in the order the runs list them
  tree: null, // tree.js
  open: new Map(), // group path -> open or not, where the user chose
  pinned: new Set(), // shortcut layers shown under their closed group's header
  generation: 0, // one per refresh: older answers are dropped
  data: new Map(), // run + '\n' + key -> a loaded layer (data.js), with its generation
  pending: new Map(), // run + '\n' + key -> the generation of its request in flight
  failed: new Map(), // run + '\n' + key -> why it could not be loaded
  selected: null, // {run, key, neuron}: the neuron whose curve is shown
};
const dom = {sections: new Map()}; // layer key -> its section, where one is on the page
const queue = []; // layer requests waiting for a free slot
let active = 0;

export async function render() {
  document.head.append(element('link', {rel: 'stylesheet', href: './static/style.css'}));
  dom.metric = element('select', {id: 'metric'});
  dom.sort = element('select', {id: 'sort'});
  dom.metric.onchange = () => {
    state.metric = dom.metric.value;
    drawLayers();
  };
  dom.statusColours = element('input', {id: 'status-colours', type: 'checkbox', checked: true});
  dom.statusColours.onchange = () => {
    state.statusColours = dom.statusColours.checked;
    drawLayers();
  };
  dom.statusLabel = element('label', {title: 'Dormant: τ-score at most τ. Saturated: it fires where its activation is flat.'},
    [dom.statusColours, ' dormant and saturated in colour']);
  dom.sort.onchange = () => {
    state.sort = dom.sort.value;
    drawLayers();
  };
  dom.filter = element('input', {id: 'filter', type: 'search', placeholder: 'ffn, layer_3 heads, …'});
  dom.filter.oninput = () => {
    state.filter = dom.filter.value.trim();
    drawLayers();
  };
  dom.filterLabel = element('label', {hidden: true, title: 'Every space-separated word must appear in the layer key'},
    ['Layers matching ', dom.filter]);
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
        'Every neuron (rows) at every logged epoch (columns): its sensitivity (the norm of ',
        'the Jacobian of its value with respect to all trainable weights or to the inputs) or its ',
        'activity on the probe batch. Hover a cell for its value; click it to follow the neuron over the epochs.',
      ]),
      element('div', {className: 'controls'}, [
        element('label', {}, ['Show ', dom.metric]),
        element('label', {}, ['Sort neurons by ', dom.sort]),
        dom.statusLabel,
        dom.filterLabel,
        dom.runs,
        refreshButton,
      ]),
      dom.status,
    ]),
    dom.curve,
    dom.layers,
    dom.tooltip,
  );
  let scheduled = false;
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      loadVisible();
    });
  };
  window.addEventListener('scroll', schedule, {passive: true});
  window.addEventListener('resize', schedule);
  await refresh();
}

async function refresh() {
  state.phase = 'loading';
  document.body.dataset.state = 'loading';
  dom.status.textContent = 'Loading…';
  state.generation++;
  state.pending.clear();
  state.failed.clear();
  queue.length = 0;
  try {
    state.runs = await listRuns();
  } catch (error) {
    dom.status.textContent = `Could not list the runs: ${error.message}`;
    state.phase = document.body.dataset.state = 'error';
    return;
  }
  const names = state.runs.map((r) => r.run);
  state.shown = new Set(names.filter((n) => !state.known.has(n) || (state.shown && state.shown.has(n))));
  state.known = new Set([...state.known, ...names]);
  state.runKeys = new Map(state.runs.map((r) => [r.run, new Set(r.layers.map((l) => l.key))]));
  state.layerKeys = [...new Set(state.runs.flatMap((r) => r.layers.map((l) => l.key)))];
  state.tree = buildTree(state.layerKeys);
  dom.filterLabel.hidden = !state.tree.children.some(isGroup) && state.layerKeys.length <= 12;
  const health = state.runs.some((r) => r.layers.some((l) => l.activity));
  const metrics = Object.keys(METRICS).filter((m) => (SENSITIVITIES.includes(m)
    ? state.runs.some((r) => r.layers.some((l) => l.wrt.includes(m))) : health));
  if (metrics.length && !metrics.includes(state.metric)) state.metric = metrics[0];
  dom.metric.replaceChildren(...metrics.map((m) => element('option', {value: m, selected: m === state.metric}, METRICS[m])));
  const sorts = Object.keys(SORTS).filter((how) => (how.startsWith('last:') ? metrics.includes(how.slice(5))
    : how !== 'dormancy' || health));
  if (!sorts.includes(state.sort)) state.sort = 'index';
  dom.sort.replaceChildren(...sorts.map((how) => element('option', {value: how, selected: how === state.sort}, SORTS[how])));
  dom.statusLabel.hidden = !health;
  drawRunChoices();
  if (!state.runs.length) {
    dom.status.textContent =
      'No per-neuron sensitivities in this log directory yet: add a NeuronSensitivityCallback ' +
      'to model.fit and refresh once an epoch has been logged.';
    dom.layers.replaceChildren();
    state.phase = document.body.dataset.state = 'empty';
    return;
  }
  state.phase = 'shown';
  drawLayers();
  if (state.selected) drawCurve();
}

function drawStatus() {
  const runs = state.runs.length;
  const groups = (function count(node) {
    return node.children.filter(isGroup).reduce((total, child) => total + 1 + count(child), 0);
  })(state.tree);
  const failed = [...state.failed.values()];
  dom.status.textContent =
    `${runs} run${runs > 1 ? 's' : ''}, ${state.layerKeys.length} layers` +
    (groups ? ` in ${groups} groups` : '') + '.' +
    (state.filter ? ` ${filterKeys(state.layerKeys, state.filter).length} match “${state.filter}”.` : '') +
    (failed.length ? ` Could not load: ${failed.join('; ')}` : '');
}

/** The page's state for scripts and tests: 'ready' once nothing is in flight. */
function drawState() {
  if (state.phase === 'shown') document.body.dataset.state = state.pending.size ? 'loading' : 'ready';
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

/** The tree of groups and layers, or the layers matching the filter. */
function drawLayers() {
  dom.sections.clear();
  dom.tooltip.hidden = true; // its cell may be gone
  if (state.filter) {
    const keys = filterKeys(state.layerKeys, state.filter);
    dom.layers.replaceChildren(...(keys.length
      ? keys.map((key) => layerSection(key, key))
      : [element('p', {className: 'note'}, `No layer key contains every word of “${state.filter}”.`)]));
  } else {
    dom.layers.replaceChildren(...state.tree.children.map(nodeElement));
  }
  drawStatus();
  loadVisible();
}

function nodeElement(node) {
  if (!isGroup(node)) return layerSection(node.key, node.name);
  const box = element('section', {className: 'group'});
  box.dataset.group = node.path;
  drawGroup(box, node);
  return box;
}

function isOpen(node) {
  return state.open.has(node.path) ? state.open.get(node.path) : openByDefault(node);
}

/**
 * A group: its header (open or close it; its `ffn` and `heads` sites, which
 * show their matrices under the header while it is closed), then its
 * layers when open.
 */
function drawGroup(box, node) {
  for (const key of keysUnder(node)) {
    if (dom.sections.has(key) && box.contains(dom.sections.get(key))) dom.sections.delete(key);
  }
  const open = isOpen(node);
  box.dataset.open = String(open);
  dom.tooltip.hidden = true;
  const toggle = element('button', {type: 'button', className: 'toggle'}, [
    element('span', {className: 'arrow'}, open ? '▾' : '▸'), node.name,
  ]);
  toggle.setAttribute('aria-expanded', String(open));
  toggle.onclick = () => {
    state.open.set(node.path, !open);
    drawGroup(box, node);
    loadVisible();
  };
  const sites = shortcuts(node);
  const chips = sites.map(({name, key}) => {
    const chip = element('button', {type: 'button', className: 'shortcut', title: key}, name);
    chip.dataset.key = key;
    chip.setAttribute('aria-pressed', String(!open && state.pinned.has(key)));
    chip.onclick = () => {
      if (open) {
        const section = dom.sections.get(key);
        if (section) section.scrollIntoView({block: 'start'});
        return;
      }
      if (state.pinned.has(key)) state.pinned.delete(key);
      else state.pinned.add(key);
      drawGroup(box, node);
      loadVisible();
    };
    return chip;
  });
  const count = keysUnder(node).length;
  const head = element('div', {className: 'group-head'}, [
    toggle, element('span', {className: 'note'}, `${count} layer${count > 1 ? 's' : ''}`), ...chips,
  ]);
  const relative = (key) => key.slice(node.path.length + 1);
  const body = open
    ? [
      ...(node.key === null ? [] : [layerSection(node.key, `${node.name} (its output)`)]),
      ...node.children.map(nodeElement),
    ]
    : sites.filter(({key}) => state.pinned.has(key)).map(({key}) => layerSection(key, relative(key)));
  box.replaceChildren(head, element('div', {className: 'group-body'}, body));
}

/** A layer's section: drawn now, filled as its runs' data arrive. */
function layerSection(key, title) {
  const section = element('section', {className: 'layer'});
  section.dataset.layer = key;
  section.dataset.title = title;
  dom.sections.set(key, section);
  drawLayer(key);
  return section;
}

/** Fetches the layers whose sections are in view (or half a screen away). */
function loadVisible() {
  if (state.phase !== 'shown') return;
  const margin = window.innerHeight / 2;
  for (const [key, section] of dom.sections) {
    if (!section.isConnected) continue;
    const box = section.getBoundingClientRect();
    if (box.bottom < -margin || box.top > window.innerHeight + margin) continue;
    for (const run of state.shown) {
      const id = run + '\n' + key;
      const have = state.data.get(id);
      if (!state.runKeys.get(run).has(key) || state.pending.has(id) || state.failed.has(id) ||
          (have && have.generation === state.generation)) continue;
      state.pending.set(id, state.generation);
      queue.push({run, key, id, generation: state.generation});
    }
  }
  pump();
  drawState();
}

function pump() {
  while (active < PARALLEL && queue.length) {
    const job = queue.shift();
    active++;
    const current = () => job.generation === state.generation;
    loadLayer(job.run, job.key).then(
      (data) => {
        if (current()) {
          state.data.set(job.id, Object.assign(data, {generation: job.generation}));
          forgetHidden();
        }
      },
      (error) => {
        if (current()) state.failed.set(job.id, `${job.run} ${job.key}: ${error.message}`);
      },
    ).finally(() => {
      active--;
      if (state.pending.get(job.id) === job.generation) state.pending.delete(job.id);
      if (current()) {
        drawLayer(job.key);
        if (state.selected && state.selected.key === job.key) drawCurve();
        if (state.failed.has(job.id)) drawStatus();
      }
      pump();
      drawState();
    });
  }
}

/**
 * Drops the oldest loaded layers that are not on the page beyond `KEPT`, so
 * that browsing a large model does not hold every layer it has shown.
 */
function forgetHidden() {
  for (const id of state.data.keys()) {
    if (state.data.size <= KEPT) return;
    const section = dom.sections.get(id.split('\n')[1]);
    if (!(section && section.isConnected)) state.data.delete(id);
  }
}

/** One layer: its name, its colour scale, and a matrix per shown run. */
function drawLayer(key) {
  const section = dom.sections.get(key);
  if (!section) return;
  const runs = state.runs.filter((r) => state.shown.has(r.run) && state.runKeys.get(r.run).has(key));
  const serieses = runs
    .map((r) => state.data.get(r.run + '\n' + key))
    .map((data) => data && metricSeries(data, state.metric))
    .filter(Boolean);
  const limits = logLimits(serieses.flatMap((s) => s.values));
  const frozen = serieses.some((s) => s.frozen && s.frozen.some(Boolean));
  const health = serieses.some((s) => s.status && s.status.some(Boolean));
  const panels = element('div', {className: 'panels'});
  for (const {run} of runs) panels.append(panel(run, key, limits));
  section.replaceChildren(
    element('div', {className: 'layer-head'}, [
      element('h2', {title: key}, section.dataset.title), legend(limits, frozen, health),
    ]),
    panels,
  );
}

/** The channels per head of an attention-context site, or 0. */
function headSize(data, series) {
  const heads = data.heads;
  return heads > 1 && series.neurons % heads === 0 ? series.neurons / heads : 0;
}

function panel(run, key, limits) {
  const box = element('div', {className: 'panel'});
  box.dataset.run = run;
  box.append(element('h3', {}, run));
  const id = run + '\n' + key;
  const data = state.data.get(id);
  const series = data && metricSeries(data, state.metric);
  if (!data) {
    box.classList.add('pending');
    box.append(element('p', {className: 'note'}, state.failed.get(id) || 'loading…'));
    return box;
  }
  if (!series) {
    box.append(element('p', {className: 'note'}, `no ${METRICS[state.metric]} logged`));
    return box;
  }
  const last = series.steps.length - 1;
  const dead = deadSince(series).filter((s) => s !== null).length;
  let frozen = 0;
  const counts = {dormant: 0, saturated: 0};
  for (let n = 0; n < series.neurons; n++) {
    frozen += frozenAt(series, last, n);
    const status = statusAt(series, last, n);
    if (status in counts) counts[status]++;
  }
  const healthy = Boolean(series.status && series.status[last]);
  const estimated = series.errors.filter(Boolean).length;
  const groupSize = headSize(data, series);
  const shown = series.steps.length;
  box.append(element('p', {className: 'caption'}, [
    `${series.neurons} neurons`,
    groupSize ? ` (${data.heads} heads × ${groupSize})` : '',
    ` × ${shown} logged epochs`,
    series.loggedSteps > shown ? ` (of ${series.loggedSteps}, spread evenly; at most ${MAX_COLUMNS} are shown)` : '',
    '; ',
    element('span', {className: 'dead-count'}, `${dead} dead`),
    frozen ? '; ' : '',
    frozen ? element('span', {className: 'frozen-count'}, `${frozen} with nothing trainable upstream`) : '',
    healthy ? '; ' : '',
    healthy ? element('span', {className: 'dormant-count'}, `${counts.dormant} dormant`) : '',
    healthy ? ', ' : '',
    healthy ? element('span', {className: 'saturated-count'}, `${counts.saturated} saturated`) : '',
    ` at epoch ${series.steps[last]}`,
    estimated ? `; estimated at ${estimated} of them` : '',
  ]));
  const order = sortOrder(series, state.sort, groupSize, (metric) => metricSeries(data, metric));
  const canvas = element('canvas', {className: 'matrix'});
  const selected = state.selected && state.selected.run === run && state.selected.key === key
    ? state.selected.neuron : null;
  const unit = groupSize ? 'head' : 'neuron';
  const yTitle = state.sort === 'index' ? unit : groupSize ? 'head (sorted within)' : 'neuron (sorted)';
  const geo = drawMatrix(canvas, series, order, limits, {yTitle, selected, groupSize, statusColours: state.statusColours});
  // Where the cells are, and which neuron each row is, for scripts and tests:
  // row r's top is top + r * cellHeight + floor(r / groupSize) * gap.
  Object.assign(canvas.dataset, {
    x0: geo.x0, top: geo.top, cellWidth: geo.cw, cellHeight: geo.ch, order: order.join(','),
    groupSize: geo.groupSize, gap: geo.gap,
  });
  const under = (event) => cellAt(geo, event.offsetX, event.offsetY);
  canvas.onmousemove = (event) => {
    const cell = under(event);
    if (cell) showTooltip(event, run, key, series, order[cell.row], cell.col, groupSize);
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

/** What a cell's state adds to its value: dead, frozen, dormant, saturated. */
function stateNote(series, col, neuron) {
  const notes = {
    dead: ' (dead)', frozen: ' (nothing trainable upstream)', dormant: ' (dormant)', saturated: ' (saturated)',
  };
  return notes[cellState(series, col, neuron)] || '';
}

/** "layer, neuron (head, dim), epoch, value, method", beside the mouse. */
function showTooltip(event, run, key, series, neuron, col, groupSize) {
  const value = valueAt(series, col, neuron);
  const error = series.errors[col] ? series.errors[col][neuron] : null;
  const step = series.steps[col];
  const method = error === null ? series.methods[col] : `${series.methods[col]} ± ${formatValue(error)}`;
  const head = groupSize ? Math.floor(neuron / groupSize) : null;
  const dim = groupSize ? neuron % groupSize : null;
  const status = statusAt(series, col, neuron);
  const tip = dom.tooltip;
  tip.replaceChildren(
    element('div', {}, [
      element('b', {className: 'layer'}, key), ', ',
      element('span', {className: 'neuron'}, `neuron ${neuron}` + (groupSize ? ` (head ${head}, dim ${dim})` : '')), ', ',
      element('span', {className: 'epoch'}, `epoch ${step}`), ', ',
      element('span', {className: 'value'}, `value ${formatValue(value)}${stateNote(series, col, neuron)}`), ', ',
      element('span', {className: 'method'}, method),
    ]),
    element('div', {className: 'where'}, `run ${run}, ${METRICS[state.metric]}` + (status ? `; status ${status}` : '')),
  );
  Object.assign(tip.dataset, {
    run, layer: key, metric: state.metric, wrt: SENSITIVITIES.includes(state.metric) ? state.metric : '',
    neuron: String(neuron), epoch: String(step),
    value: String(value), method: series.methods[col], error: error === null ? '' : String(error),
    frozen: String(frozenAt(series, col, neuron)), status: status || '', state: cellState(series, col, neuron),
    head: head === null ? '' : String(head), dim: dim === null ? '' : String(dim),
  });
  tip.hidden = false;
  const x = event.clientX + 14;
  const y = event.clientY + 14;
  tip.style.left = `${Math.min(x, window.innerWidth - tip.offsetWidth - 4)}px`;
  tip.style.top = `${y + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 8 : y}px`;
}

// The curve's lines: the sensitivities and two views of the activity.
const CURVE_METRICS = ['weights', 'inputs', 'mean_abs', 'tau_score'];

/** The selected neuron over the epochs: sensitivity and activity, every shown run. */
function drawCurve() {
  const {run, key, neuron} = state.selected;
  if (!state.data.has(run + '\n' + key)) return; // reloading after a refresh: drawn when it arrives
  const runs = [run, ...state.runs.map((r) => r.run).filter((r) => r !== run && state.shown.has(r))];
  const lines = [];
  const keyItems = [];
  for (const name of runs) {
    const data = state.data.get(name + '\n' + key);
    if (!data) continue;
    for (const metric of CURVE_METRICS) {
      const series = metricSeries(data, metric);
      if (!series || neuron >= series.neurons) continue;
      const dashed = name !== run;
      lines.push({
        colour: METRIC_COLOURS[metric],
        dashed,
        steps: series.steps,
        values: series.values.map((_, col) => valueAt(series, col, neuron)),
        errors: series.errors.map((e) => (e ? e[neuron] : null)),
        frozen: series.values.map((_, col) => frozenAt(series, col, neuron)),
      });
      const sample = element('i', {className: dashed ? 'dashed' : ''});
      sample.style.borderColor = METRIC_COLOURS[metric];
      const item = element('span', {className: 'curve-key'}, [sample, `${name}, ${METRICS[metric]}`]);
      item.dataset.metric = metric;
      keyItems.push(item);
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
        element('p', {className: 'note'}, 'Zero (dead) epochs: magenta marks at the bottom (pale blue: nothing trainable upstream); NaN or Inf: grey marks at the top; bars: ± the estimator\'s standard error.'),
        valuesTable(run, key, neuron),
      ]),
    ]),
  );
  dom.curve.hidden = false;
}

/** The clicked run's numbers behind the curve, one row per logged epoch:
 * every metric, and the status. */
function valuesTable(run, key, neuron) {
  const data = state.data.get(run + '\n' + key);
  const metrics = Object.keys(METRICS)
    .map((m) => [m, metricSeries(data, m)])
    .filter(([, series]) => series && neuron < series.neurons);
  const steps = [...new Set(metrics.flatMap(([, series]) => series.steps))].sort((a, b) => a - b);
  const health = metricSeries(data, 'tau_score');
  const rows = steps.map((step) => {
    const row = element('tr', {}, element('td', {}, String(step)));
    row.dataset.epoch = String(step);
    for (const [metric, series] of metrics) {
      const col = series.steps.indexOf(step);
      const cell = element('td');
      if (col >= 0) {
        const value = valueAt(series, col, neuron);
        const error = series.errors[col] ? series.errors[col][neuron] : null;
        const note = SENSITIVITIES.includes(metric) && value === 0 ? stateNote(series, col, neuron) : '';
        cell.textContent = formatValue(value) + (error === null ? '' : ` ± ${formatValue(error)}`) + note;
        cell.title = series.methods[col];
        cell.dataset.metric = metric;
        cell.dataset.value = String(value);
        if (SENSITIVITIES.includes(metric)) cell.dataset.wrt = metric;
      }
      row.append(cell);
    }
    if (health) {
      const col = health.steps.indexOf(step);
      const status = col >= 0 ? statusAt(health, col, neuron) : null;
      const cell = element('td', {className: `status ${status || ''}`}, status || '');
      cell.dataset.status = status || '';
      row.append(cell);
    }
    return row;
  });
  const head = element('tr', {}, [
    element('th', {}, 'epoch'),
    ...metrics.map(([metric]) => element('th', {}, SENSITIVITIES.includes(metric) ? `to ${metric}` : METRICS[metric])),
    ...(health ? [element('th', {}, 'status')] : []),
  ]);
  return element('details', {className: 'values'}, [
    element('summary', {}, 'values'),
    element('table', {}, [element('thead', {}, head), element('tbody', {}, rows)]),
  ]);
}

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...(Array.isArray(children) ? children : [children]));
  return node;
}
