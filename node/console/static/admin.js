// The configuration pages: plugins (promote, roll back, shadow agreement), routes (edit,
// check, save, explain), latency per product, and the action log.

import {
  ApiError,
  adminButton,
  api,
  badge,
  button,
  duration,
  h,
  isAdmin,
  notice,
  pressing,
  section,
  table,
  text,
  uid,
  when,
} from './api.js';
import { changes, heading, updated } from './pages.js';

const enc = encodeURIComponent;

// -- plugins ---------------------------------------------------------------------------------
const fixed = (value, digits = 3) => (typeof value === 'number' ? value.toFixed(digits) : value == null ? '—' : String(value));
/** Four significant digits, as `ainode shadow report` prints them. */
function number(value, signed = false) {
  if (typeof value !== 'number') return '—';
  const shown = Number(value.toPrecision(4)).toString();
  return signed && value > 0 ? `+${shown}` : shown;
}

/** Does a shadow report row compare versions of this plugin? */
function aboutPlugin(row, name) {
  const names = [row.plugin, row.production_plugin, row.shadow_plugin].filter(Boolean);
  if (names.length) return names.includes(name);
  return [row.production, row.shadow].some((side) => typeof side === 'string' && side.startsWith(`${name}@`));
}

function side(value) {
  if (value == null) return '—';
  if (typeof value === 'string') return value;
  return `${value.plugin || ''}@${value.version || value.plugin_version || ''}${value.job_id != null ? ` (job ${value.job_id})` : ''}`;
}

/** One shadow agreement row: which versions, on which series, Dice per segment, measurements. */
function agreement(row) {
  const known = ['series_instance_uid', 'production', 'shadow', 'segments', 'measurements', 'evaluations_agree', 'evaluations_total', 'plugin'];
  const rest = Object.entries(row).filter(([key]) => !known.includes(key));
  return h(
    'div',
    { class: 'agreement', 'data-testid': 'shadow-row' },
    h('p', {}, h('strong', {}, side(row.production)), ' in production vs ', h('strong', {}, side(row.shadow)), ' in shadow'),
    row.series_instance_uid ? h('p', { class: 'sub' }, 'series ', uid(row.series_instance_uid, true)) : null,
    (row.segments || []).length
      ? table(
          [
            { title: 'Segment', cell: (s) => s.label },
            { title: 'Dice', class: 'number', cell: (s) => h('span', { 'data-testid': 'shadow-dice' }, s.dice == null ? 'one side only' : fixed(s.dice)) },
          ],
          row.segments,
        )
      : null,
    (row.measurements || []).length
      ? table(
          [
            { title: 'Measurement', cell: (m) => `${m.meaning}${m.unit ? ` (${m.unit})` : ''}` },
            { title: 'Production', class: 'number', cell: (m) => number(m.production) },
            { title: 'Shadow', class: 'number', cell: (m) => number(m.shadow) },
            { title: 'Δ', class: 'number', cell: (m) => (m.production != null && m.shadow != null ? number(m.shadow - m.production, true) : '—') },
          ],
          row.measurements,
        )
      : null,
    row.evaluations_total ? h('p', {}, `evaluations agree ${row.evaluations_agree}/${row.evaluations_total}`) : null,
    rest.length ? h('dl', { class: 'facts small' }, rest.map(([k, v]) => [h('dt', {}, k), h('dd', {}, typeof v === 'object' ? JSON.stringify(v) : String(v))])) : null,
  );
}

/** Why a version cannot be promoted (null: it can): promotion puts a shadow version in
 * production, so a version that runs in no shadow route has nothing to show for itself. */
function promotable(version) {
  if (version.shadow) return null;
  if (version.production) return 'already in production';
  return 'only a version that runs in a shadow route can be promoted (Roll back returns to an earlier one)';
}

/** Mean Dice over every segment compared on every series, as `ainode shadow report` ends. */
function meanDice(rows) {
  const values = rows.flatMap((row) => (row.segments || []).map((s) => s.dice)).filter((d) => typeof d === 'number');
  if (!values.length) return null;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return h('p', { class: 'mean-dice' }, `${rows.length} series compared; mean Dice `, h('strong', { 'data-testid': 'shadow-mean-dice' }, mean.toFixed(3)));
}

/** A RoutesChange: what a promotion or rollback did to routes.yaml. */
function routesChange(change) {
  const previous = Object.entries(change.previous || {});
  return h(
    'div',
    { class: 'panel change', 'data-testid': 'routes-change', 'data-action': change.action, 'data-version': change.version },
    h('h2', {}, change.action === 'promote' ? `Promoted ${change.plugin} ${change.version} to production` : `Rolled ${change.plugin} back to ${change.version || 'the newest installed version'}`),
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'Routes changed'),
      h('dd', { 'data-testid': 'routes-changed' }, (change.routes_changed || []).join(', ') || 'none'),
      h('dt', {}, 'Before'),
      h('dd', {}, previous.length ? h('ul', { class: 'plain' }, previous.map(([route, ref]) => h('li', {}, `${route}: ${ref}`))) : '—'),
      h('dt', {}, 'routes.yaml'),
      h('dd', { class: 'uid' }, `${(change.before_digest || '').slice(0, 12)} → ${(change.after_digest || '').slice(0, 12)}`),
    ),
  );
}

export function pluginsPage(view) {
  const stamp = updated();
  const outcome = h('div', { class: 'messages', 'data-testid': 'plugin-outcome' });
  const holder = h('div');
  view.main.append(heading('Plugins', stamp), outcome, holder);
  let digest = null;
  let load = async () => {};

  const act = (name, verb, body, label) => (event) => {
    const confirmBox = h(
      'div',
      { class: 'panel confirm', 'data-testid': 'plugin-confirm' },
      h('p', {}, label),
      button(verb === 'promote' ? 'Yes, promote' : 'Yes, roll back', (e) =>
        pressing(e.target, async () => {
          try {
            const change = await api('POST', `/api/plugins/${enc(name)}/${verb}`, { ...body, ...(digest ? { expected_digest: digest } : {}) });
            outcome.replaceChildren(routesChange(change));
          } catch (error) {
            if (error instanceof ApiError) outcome.replaceChildren(notice(`Refused: ${error.message}`, 'error', 'plugin-refused'));
            else throw error;
          }
          await load(true);
        }), { 'data-testid': 'plugin-confirm-yes' }),
      button('Cancel', () => outcome.replaceChildren(), { class: 'secondary', 'data-testid': 'plugin-confirm-no' }),
    );
    outcome.replaceChildren(confirmBox);
    event.target.blur();
  };

  const render = changes(({ plugins, shadow }) => {
    const names = [...new Set(plugins.map((p) => p.name))].sort();
    const unplaced = shadow.filter((row) => !names.some((n) => aboutPlugin(row, n)));
    const cards = names.map((name) => {
        const versions = plugins.filter((p) => p.name === name);
        const rows = shadow.filter((row) => aboutPlugin(row, name));
        const inProduction = versions.filter((v) => v.production).map((v) => v.version);
        return h(
          'section',
          { class: 'panel plugin', 'data-testid': 'plugin-card', 'data-plugin': name },
          h(
            'div',
            { class: 'plugin-head' },
            h('h2', {}, name),
            adminButton(
              'Roll back',
              act(name, 'rollback', {}, `Roll ${name} back to the version its last promotion replaced?`),
              { class: 'secondary', 'data-testid': 'plugin-rollback', 'data-plugin': name },
            ),
          ),
          h(
            'div',
            { class: 'plugin-body' },
            h(
              'div',
              { class: 'versions' },
              table(
                [
                  { title: 'Version', cell: (v) => h('strong', {}, v.version) },
                  {
                    title: 'Use',
                    cell: (v) => [
                      v.production ? badge('production', 'badge-production') : null,
                      v.shadow ? badge('shadow', 'badge-shadow') : null,
                      !v.production && !v.shadow ? h('span', { class: 'sub' }, 'installed') : null,
                    ],
                  },
                  { title: 'Runner', cell: (v) => v.runner || '—' },
                  { title: 'Device', cell: (v) => v.device || '—' },
                  ...(versions.some((v) => v.routes) ? [{ title: 'Routes', cell: (v) => (v.routes || []).join(', ') || '—' }] : []),
                  {
                    title: '',
                    cell: (v) =>
                      adminButton(
                        'Promote',
                        act(name, 'promote', { version: v.version }, `Put ${name}@${v.version} in production${inProduction.length ? ` in place of ${inProduction.join(', ')}` : ''}?`),
                        { 'data-testid': 'plugin-promote', 'data-plugin': name, 'data-version': v.version },
                        promotable(v),
                      ),
                  },
                ],
                versions,
                { row: (v) => ({ 'data-testid': 'plugin-version', 'data-version': v.version, 'data-production': String(v.production), 'data-shadow': String(v.shadow) }) },
              ),
            ),
            h(
              'div',
              { class: 'shadow-report', 'data-testid': 'shadow-report' },
              h('h3', {}, 'Shadow agreement'),
              meanDice(rows),
              rows.length ? rows.map(agreement) : h('p', { class: 'empty' }, 'no series compared yet'),
            ),
          ),
        );
    });
    holder.replaceChildren(
      ...cards,
      ...(names.length ? [] : [h('p', { class: 'empty' }, 'no plugins installed')]),
      ...(unplaced.length ? [section('Other comparisons', unplaced.map(agreement))] : []),
    );
  });

  load = async (force = false) => {
    const [plugins, shadow, routes] = await Promise.all([
      api('GET', '/api/plugins'),
      api('GET', '/api/shadow').catch(() => []),
      api('GET', '/api/routes').catch(() => null),
    ]);
    if (!view.alive()) return;
    digest = routes ? routes.digest : null;
    const rows = Array.isArray(shadow) ? shadow : (shadow && (shadow.series || shadow.rows)) || [];
    render({ plugins, shadow: rows }, force);
    stamp.touch();
  };
  view.every(5000, () => load());
}

// -- routes ----------------------------------------------------------------------------------
function checkResult(check, saved = null) {
  const errors = check.errors || [];
  const warnings = check.warnings || [];
  return h(
    'div',
    { class: `check ${errors.length ? 'check-bad' : 'check-ok'}`, 'data-testid': 'routes-check-result', 'data-ok': String(!errors.length) },
    h('p', { class: 'verdict' }, errors.length ? `${errors.length} error(s)` : 'No errors', warnings.length ? `, ${warnings.length} warning(s)` : '', saved ? ` — ${saved}` : ''),
    errors.length ? h('ul', { class: 'errors' }, errors.map((e) => h('li', { 'data-testid': 'routes-error' }, text(e)))) : null,
    warnings.length ? h('ul', { class: 'warnings' }, warnings.map((w) => h('li', { 'data-testid': 'routes-warning' }, text(w)))) : null,
  );
}

export function routesPage(view) {
  const path = h('span', { class: 'sub', 'data-testid': 'routes-path' });
  const area = h('textarea', { 'data-testid': 'routes-text', spellcheck: 'false', rows: 24, 'aria-label': 'routes.yaml', autocomplete: 'off' });
  const result = h('div', { 'data-testid': 'routes-result' });
  const dirty = h('span', { class: 'dirty', 'data-testid': 'routes-dirty', hidden: true }, 'unsaved changes');
  let digest = null;
  let loaded = '';

  const load = async () => {
    const routes = await api('GET', '/api/routes');
    area.value = routes.text;
    loaded = routes.text;
    digest = routes.digest;
    path.textContent = ` ${routes.path}`;
    dirty.hidden = true;
    result.replaceChildren(checkResult(routes.check || { errors: [], warnings: [] }, 'as on disk'));
  };
  area.addEventListener('input', () => {
    dirty.hidden = area.value === loaded;
  });
  const check = button('Check', (event) =>
    pressing(event.target, async () => {
      result.replaceChildren(checkResult(await api('POST', '/api/routes/check', { text: area.value })));
    }), { 'data-testid': 'routes-check' });
  const save = adminButton('Save', (event) =>
    pressing(event.target, async () => {
      try {
        const answer = await api('PUT', '/api/routes', { text: area.value, expected_digest: digest });
        digest = answer.digest;
        loaded = area.value;
        dirty.hidden = true;
        result.replaceChildren(notice(`Saved and reloaded (digest ${String(answer.digest).slice(0, 12)}).`, 'ok', 'routes-saved'));
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (error.status === 422) {
          const detail = error.body && error.body.detail;
          let errors = [error.message];
          if (typeof detail === 'string') errors = detail.split('\n').filter(Boolean);
          else if (Array.isArray(detail)) errors = detail;
          else if (detail && detail.errors) errors = detail.errors;
          result.replaceChildren(checkResult({ errors, warnings: (detail && detail.warnings) || [] }, 'not saved'));
        } else if (error.status === 409) {
          result.replaceChildren(
            notice('Not saved: routes.yaml changed on disk since it was loaded. Reload it, then make your change again.', 'error', 'routes-conflict'),
            button('Reload from disk', () => load().catch(() => {}), { class: 'secondary' }),
          );
        }
      }
    }), { 'data-testid': 'routes-save' });
  const reload = button('Reload from disk', () => load().catch(() => {}), { class: 'secondary', 'data-testid': 'routes-reload' });

  const explainInput = h('input', { 'data-testid': 'explain-uid', placeholder: 'Study Instance UID', 'aria-label': 'Study Instance UID', value: view.query.get('explain') || '' });
  const explainOut = h('pre', { class: 'explain', 'data-testid': 'explain-text', hidden: true });
  const explain = async () => {
    const studyUid = explainInput.value.trim();
    if (!studyUid) return;
    const answer = await api('GET', `/api/routes/explain/${enc(studyUid)}`);
    explainOut.textContent = answer.text;
    explainOut.hidden = false;
  };
  const explainForm = h(
    'form',
    {
      class: 'explain-form',
      onsubmit: (event) => {
        event.preventDefault();
        pressing(event.target.querySelector('button'), explain);
      },
    },
    explainInput,
    h('button', { type: 'submit', 'data-testid': 'explain-run' }, 'Explain'),
  );

  view.main.append(
    heading('Routes', path),
    h(
      'div',
      { class: 'routes-layout' },
      h('section', { class: 'panel editor' }, h('div', { class: 'toolbar' }, check, save, reload, dirty), area, result),
      section('Explain a study', h('p', { class: 'hint' }, 'Why each route matched a study or not, as `ainode routes explain` prints it.'), explainForm, explainOut),
    ),
  );
  if (!isAdmin()) area.setAttribute('title', 'viewers may check a change but not save it');
  load().catch(() => {});
  if (explainInput.value) explain().catch(() => {});
}

// -- latency ---------------------------------------------------------------------------------
export function latencyPage(view) {
  const stamp = updated();
  const day = h('div');
  const week = h('div');
  view.main.append(
    heading('Latency', stamp),
    h('p', { class: 'hint' }, 'From the last instance received to the results sent, per product, over the last day and week.'),
    section('Last 24 hours', day),
    section('Last 7 days', week),
  );
  const latencyTable = (rows, window) =>
    table(
      [
        { title: 'Plugin', cell: (r) => r.plugin },
        { title: 'Mode', cell: (r) => badge(r.mode) },
        { title: 'Modality', cell: (r) => r.modality || '—' },
        { title: 'Jobs', class: 'number', cell: (r) => String(r.jobs) },
        { title: 'p50', class: 'number', cell: (r) => h('span', { 'data-testid': 'latency-p50' }, duration(r.p50_s)) },
        { title: 'p95', class: 'number', cell: (r) => h('span', { 'data-testid': 'latency-p95' }, duration(r.p95_s)) },
        { title: 'Worst', class: 'number', cell: (r) => duration(r.max_s) },
      ],
      rows,
      { testid: `latency-${window}`, empty: 'no finished jobs in this window', row: (r) => ({ 'data-testid': 'latency-row', 'data-plugin': r.plugin, 'data-mode': r.mode }) },
    );
  const renderDay = changes((rows) => day.replaceChildren(latencyTable(rows, 'day')));
  const renderWeek = changes((rows) => week.replaceChildren(latencyTable(rows, 'week')));
  view.every(30000, async () => {
    const [d, w] = await Promise.all([api('GET', '/api/latency?window=day'), api('GET', '/api/latency?window=week')]);
    if (!view.alive()) return;
    renderDay(d);
    renderWeek(w);
    stamp.touch();
  });
}

// -- actions ---------------------------------------------------------------------------------
/** Before or after of an action, in one line; long values (a routes file) fold away. */
function change(value) {
  if (value === null || value === undefined) return '';
  if (typeof value !== 'object') return h('span', { class: 'change-text' }, String(value));
  const multiline = ([, v]) => typeof v === 'string' && v.includes('\n');
  const texts = Object.entries(value).filter(multiline);
  const plain = Object.entries(value).filter((entry) => !multiline(entry));
  const line = plain.map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
  const summary = [...line, ...texts.map(([k, v]) => `${k}: ${v.split('\n').length} lines`)].join('; ');
  if (!texts.length && summary.length <= 80) return h('span', { class: 'change-text' }, summary);
  return h(
    'details',
    {},
    h('summary', {}, summary.length > 80 ? `${summary.slice(0, 78)}…` : summary),
    plain.length ? h('pre', {}, JSON.stringify(Object.fromEntries(plain), null, 2)) : null,
    texts.map(([k, v]) => [h('div', { class: 'sub' }, k), h('pre', {}, v)]),
  );
}

/** The lines a routes change removed (-) and added (+), with a line of context around each
 * change: a longest-common-subsequence diff, for files of a few hundred lines. */
function lineDiff(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  if (a.length * b.length > 250000) return null;
  const common = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      common[i][j] = a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
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
  const near = (k) => ops.slice(Math.max(0, k - 1), k + 2).some(([op]) => op !== ' ');
  const lines = [];
  ops.forEach(([op, line], k) => {
    if (op === ' ' && !near(k)) {
      if (lines.length && lines[lines.length - 1].className !== 'skip') lines.push(h('div', { class: 'skip' }, '  …'));
      return;
    }
    const css = { '+': 'added', '-': 'removed', ' ': 'same' }[op];
    lines.push(h('div', { class: css }, `${op} ${line}`));
  });
  if (!ops.some(([op]) => op !== ' ')) return h('div', { class: 'diff' }, 'no change');
  return h('div', { class: 'diff', 'data-testid': 'action-diff' }, lines);
}

function routesDiff(action) {
  const before = action.before && action.before.text;
  const after = action.after && action.after.text;
  if (typeof before !== 'string' || typeof after !== 'string') return null;
  return lineDiff(before, after);
}

export function actionsPage(view) {
  const stamp = updated();
  const holder = h('div');
  view.main.append(heading('Actions', stamp), h('p', { class: 'hint' }, 'Every admin action, who did it and when, whether it was done or refused.'), holder);
  const render = changes((actions) => {
    holder.replaceChildren(
      table(
        [
          { title: 'When', cell: (a) => when(a.at, true) },
          { title: 'Who', cell: (a) => a.user },
          { title: 'Action', cell: (a) => h('strong', {}, a.action) },
          { title: 'Target', cell: (a) => h('span', { class: a.target.length <= 24 ? 'uid short' : 'uid' }, a.target) },
          { title: 'Outcome', cell: (a) => (a.outcome === 'ok' ? badge('ok') : h('span', { class: 'error-inline' }, a.outcome)) },
          { title: 'Change', cell: (a) => routesDiff(a) || [h('div', {}, change(a.before)), h('div', {}, a.after != null ? '→ ' : '', change(a.after))] },
        ],
        actions,
        { testid: 'actions', empty: 'no actions yet', row: (a) => ({ 'data-testid': 'action-row', 'data-action': a.action }) },
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
