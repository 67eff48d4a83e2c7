// What the node did and who did what: latency per product, and the console's action log.

import { api } from './api.js';
import { badge, changes, duration, h, heading, section, table, updated, when } from './ui.js';

// -- latency ----------------------------------------------------------------------------------
function latencyTable(rows, window) {
  const seconds = (key, testid) => (r) => h('span', { 'data-testid': testid }, duration(r[key]));
  return table(
    [
      { title: 'Plugin', cell: (r) => r.plugin },
      { title: 'Mode', cell: (r) => badge(r.mode) },
      { title: 'Modality', cell: (r) => r.modality || '—' },
      { title: 'Jobs', class: 'number', cell: (r) => String(r.jobs) },
      { title: 'p50', class: 'number', cell: seconds('p50_s', 'latency-p50') },
      { title: 'p95', class: 'number', cell: seconds('p95_s', 'latency-p95') },
      { title: 'Worst', class: 'number', cell: seconds('max_s', 'latency-max') },
    ],
    rows,
    {
      testid: `latency-${window}`,
      empty: 'no job delivered all its results in this window',
      row: (r) => ({ 'data-testid': 'latency-row', 'data-plugin': r.plugin, 'data-mode': r.mode }),
    },
  );
}

export function latencyPage(view) {
  const stamp = updated();
  const day = h('div');
  const week = h('div');
  const hint =
    'Per product, from the last image of a study received to the last of its results acknowledged ' +
    'by its destinations; shadow jobs apart.';
  view.main.append(
    heading('Latency', stamp),
    h('p', { class: 'hint' }, hint),
    section('Last 24 hours', day),
    section('Last 7 days', week),
  );
  const renderDay = changes((rows) => day.replaceChildren(latencyTable(rows, 'day')));
  const renderWeek = changes((rows) => week.replaceChildren(latencyTable(rows, 'week')));
  view.every(30000, async () => {
    const [d, w] = await Promise.all([
      api('GET', '/api/latency?window=day'),
      api('GET', '/api/latency?window=week'),
    ]);
    if (!view.alive()) return;
    renderDay(d);
    renderWeek(w);
    stamp.touch();
  });
}

// -- actions ----------------------------------------------------------------------------------
/** A before or after value on one line; a long one (a file's text) folds away. */
function change(value) {
  if (value === null || value === undefined) return '';
  if (typeof value !== 'object') return h('span', { class: 'change-text' }, String(value));
  const multiline = ([, v]) => typeof v === 'string' && v.includes('\n');
  const texts = Object.entries(value).filter(multiline);
  const plain = Object.entries(value).filter((entry) => !multiline(entry));
  const summary = [
    ...plain.map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`),
    ...texts.map(([k, v]) => `${k}: ${v.split('\n').length} lines`),
  ].join('; ');
  if (!texts.length && summary.length <= 80) return h('span', { class: 'change-text' }, summary);
  return h(
    'details',
    {},
    h('summary', {}, summary.length > 80 ? `${summary.slice(0, 78)}…` : summary),
    plain.length ? h('pre', {}, JSON.stringify(Object.fromEntries(plain), null, 2)) : null,
    texts.map(([k, v]) => [h('div', { class: 'sub' }, k), h('pre', {}, v)]),
  );
}

/** Lines removed (-) and added (+) with one line of context: a longest-common-subsequence
 * diff, for files of a few hundred lines (null for larger ones). */
function lineDiff(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  if (a.length * b.length > 250000) return null;
  const common = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      common[i][j] =
        a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
    }
  }
  const ops = []; // [' ' | '-' | '+', line]
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      ops.push([' ', a[i]]);
      i += 1;
      j += 1;
    } else if (i < a.length && (j === b.length || common[i + 1][j] >= common[i][j + 1])) {
      ops.push(['-', a[i]]);
      i += 1;
    } else {
      ops.push(['+', b[j]]);
      j += 1;
    }
  }
  if (!ops.some(([op]) => op !== ' ')) return h('div', { class: 'diff' }, 'no change');
  const near = (k) => ops.slice(Math.max(0, k - 1), k + 2).some(([op]) => op !== ' ');
  const lines = [];
  ops.forEach(([op, line], k) => {
    if (op === ' ' && !near(k)) {
      const last = lines[lines.length - 1];
      if (last && last.className !== 'skip') lines.push(h('div', { class: 'skip' }, '  …'));
      return;
    }
    const css = { '+': 'added', '-': 'removed', ' ': 'same' }[op];
    lines.push(h('div', { class: css }, `${op} ${line}`));
  });
  return h('div', { class: 'diff', 'data-testid': 'action-diff' }, lines);
}

/** What an action changed: the diff of a routes file, else before → after. */
function whatChanged(action) {
  const before = action.before && action.before.text;
  const after = action.after && action.after.text;
  const diff = typeof before === 'string' && typeof after === 'string' ? lineDiff(before, after) : null;
  if (diff) return diff;
  const arrow = action.after !== null && action.after !== undefined ? '→ ' : '';
  return [h('div', {}, change(action.before)), h('div', {}, arrow, change(action.after))];
}

export function actionsPage(view) {
  const stamp = updated();
  const holder = h('div');
  const hint = 'Every admin action, who did it and when, whether it was done or refused.';
  view.main.append(heading('Actions', stamp), h('p', { class: 'hint' }, hint), holder);
  const outcome = (a) => (a.outcome === 'ok' ? badge('ok') : h('span', { class: 'error-inline' }, a.outcome));
  const target = (a) => {
    const shown = a.target.includes('/') ? `…/${a.target.split('/').pop()}` : a.target; // a file
    return h('span', { class: shown.length <= 24 ? 'uid short' : 'uid', title: a.target }, shown);
  };
  const render = changes((actions) => {
    holder.replaceChildren(
      table(
        [
          { title: 'When', cell: (a) => when(a.at, true) },
          { title: 'Who', cell: (a) => a.user },
          { title: 'Action', cell: (a) => h('strong', {}, a.action) },
          { title: 'Target', cell: target },
          { title: 'Outcome', cell: outcome },
          { title: 'Change', cell: whatChanged },
        ],
        actions,
        {
          testid: 'actions',
          empty: 'no actions yet',
          row: (a) => ({ 'data-testid': 'action-row', 'data-action': a.action }),
        },
      ),
    );
  });
  view.every(5000, async () => {
    const actions = await api('GET', '/api/actions?limit=100');
    if (!view.alive()) return;
    render(actions);
    stamp.touch();
  });
}
