// Plugins: the installed versions, which run in production and which in shadow, the shadow
// agreement report beside them, and Promote / Roll back (routes.yaml rewritten by the node).

import { ApiError, api } from './api.js';
import {
  adminButton,
  badge,
  button,
  changes,
  enc,
  h,
  heading,
  notice,
  pressing,
  section,
  table,
  uid,
  updated,
} from './ui.js';

/** Four significant digits, as `ainode shadow report` prints them. */
function number(value, signed = false) {
  if (typeof value !== 'number') return '—';
  const shown = Number(value.toPrecision(4)).toString();
  return signed && value > 0 ? `+${shown}` : shown;
}

/** Does a report row (production "name@version (job N)" vs shadow) compare this plugin? */
const aboutPlugin = (row, name) =>
  [row.production, row.shadow].some((side) => typeof side === 'string' && side.startsWith(`${name}@`));

/** One series compared: Dice per segment, measurement differences, evaluations. */
function agreement(row) {
  const dice = (s) =>
    h('span', { 'data-testid': 'shadow-dice' }, typeof s.dice === 'number' ? s.dice.toFixed(3) : 'one side only');
  const delta = (m) =>
    typeof m.production === 'number' && typeof m.shadow === 'number' ? number(m.shadow - m.production, true) : '—';
  const segments = row.segments || [];
  const measurements = row.measurements || [];
  return h(
    'div',
    { class: 'agreement', 'data-testid': 'shadow-row' },
    h('p', {}, h('strong', {}, row.production), ' in production vs ', h('strong', {}, row.shadow), ' in shadow'),
    h('p', { class: 'sub' }, 'series ', uid(row.series_instance_uid, true)),
    segments.length
      ? table(
          [
            { title: 'Segment', cell: (s) => s.label },
            { title: 'Dice', class: 'number', cell: dice },
          ],
          segments,
        )
      : null,
    measurements.length
      ? table(
          [
            { title: 'Measurement', cell: (m) => `${m.meaning}${m.unit ? ` (${m.unit})` : ''}` },
            { title: 'Production', class: 'number', cell: (m) => number(m.production) },
            { title: 'Shadow', class: 'number', cell: (m) => number(m.shadow) },
            { title: 'Δ', class: 'number', cell: delta },
          ],
          measurements,
        )
      : null,
    row.evaluations_total
      ? h('p', {}, `evaluations agree ${row.evaluations_agree}/${row.evaluations_total}`)
      : null,
  );
}

/** Mean Dice over every segment compared on every series, as `ainode shadow report` ends. */
function meanDice(rows) {
  const values = rows
    .flatMap((row) => (row.segments || []).map((s) => s.dice))
    .filter((d) => typeof d === 'number');
  if (!values.length) return null;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return h(
    'p',
    { class: 'mean-dice' },
    `${rows.length} series compared; mean Dice `,
    h('strong', { 'data-testid': 'shadow-mean-dice' }, mean.toFixed(3)),
  );
}

/** Why a version cannot be promoted (null: it can): a promotion puts a version that runs in
 * shadow into production; the node refuses any other. */
function notPromotable(version) {
  if (version.shadow) return null;
  if (version.production) return 'already in production';
  return 'only a version that runs in a shadow route can be promoted (Roll back returns to an earlier one)';
}

/** A RoutesChange: what a promotion or rollback did to routes.yaml. */
function routesChange(change) {
  const previous = Object.entries(change.previous || {});
  const title =
    change.action === 'promote'
      ? `Promoted ${change.plugin} ${change.version} to production`
      : `Rolled ${change.plugin} back to ${change.version || 'the newest installed version'}`;
  const digest = (d) => (d || '').slice(0, 12);
  return h(
    'div',
    {
      class: 'panel change',
      'data-testid': 'routes-change',
      'data-action': change.action,
      'data-version': change.version,
    },
    h('h2', {}, title),
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'Routes changed'),
      h('dd', { 'data-testid': 'routes-changed' }, (change.routes_changed || []).join(', ') || 'none'),
      h('dt', {}, 'Before'),
      h('dd', {}, h('ul', { class: 'plain' }, previous.map(([route, ref]) => h('li', {}, `${route}: ${ref}`)))),
      h('dt', {}, 'routes.yaml'),
      h('dd', { class: 'uid' }, `${digest(change.before_digest)} → ${digest(change.after_digest)}`),
    ),
  );
}

function versionsTable(versions, promote) {
  const use = (v) => [
    v.production ? badge('production', 'badge-production') : null,
    v.shadow ? badge('shadow', 'badge-shadow') : null,
    !v.production && !v.shadow ? h('span', { class: 'sub' }, 'installed') : null,
  ];
  const routes = versions.some((v) => v.routes) // the contract lists them; older nodes do not
    ? [{ title: 'Routes', cell: (v) => (v.routes || []).join(', ') || '—' }]
    : [];
  return table(
    [
      { title: 'Version', cell: (v) => h('strong', {}, v.version) },
      { title: 'Use', cell: use },
      { title: 'Runner', cell: (v) => v.runner || '—' },
      { title: 'Device', cell: (v) => v.device || '—' },
      ...routes,
      { title: '', cell: promote },
    ],
    versions,
    {
      row: (v) => ({
        'data-testid': 'plugin-version',
        'data-version': v.version,
        'data-production': String(v.production),
        'data-shadow': String(v.shadow),
      }),
    },
  );
}

export function pluginsPage(view) {
  const stamp = updated();
  const outcome = h('div', { class: 'messages', 'data-testid': 'plugin-outcome' });
  const holder = h('div');
  view.main.append(heading('Plugins', stamp), outcome, holder);
  let digest = null; // routes.yaml as this page last saw it: a change since is refused
  let load = async () => {};

  /** Asks first, in the page (no browser dialog), then calls the API and shows its answer. */
  const confirmThen = (name, verb, body, question) => (event) => {
    const yes = async (e) =>
      pressing(e.target, async () => {
        const request = { ...body, ...(digest ? { expected_digest: digest } : {}) };
        try {
          outcome.replaceChildren(routesChange(await api('POST', `/api/plugins/${enc(name)}/${verb}`, request)));
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
          outcome.replaceChildren(notice(`Refused: ${error.message}`, 'error', 'plugin-refused'));
        }
        await load(true);
      });
    outcome.replaceChildren(
      h(
        'div',
        { class: 'panel confirm', 'data-testid': 'plugin-confirm' },
        h('p', {}, question),
        button(verb === 'promote' ? 'Yes, promote' : 'Yes, roll back', yes, { 'data-testid': 'plugin-confirm-yes' }),
        button('Cancel', () => outcome.replaceChildren(), { class: 'secondary', 'data-testid': 'plugin-confirm-no' }),
      ),
    );
    event.target.blur();
  };

  const card = (name, versions, rows) => {
    const current = versions.filter((v) => v.production).map((v) => v.version);
    const replacing = current.length ? ` in place of ${current.join(', ')}` : '';
    const promote = (v) =>
      adminButton(
        'Promote',
        confirmThen(name, 'promote', { version: v.version }, `Put ${name}@${v.version} in production${replacing}?`),
        { 'data-testid': 'plugin-promote', 'data-plugin': name, 'data-version': v.version },
        notPromotable(v),
      );
    const rollback = adminButton(
      'Roll back',
      confirmThen(name, 'rollback', {}, `Roll ${name} back to the version its last promotion replaced?`),
      { class: 'secondary', 'data-testid': 'plugin-rollback', 'data-plugin': name },
    );
    return h(
      'section',
      { class: 'panel plugin', 'data-testid': 'plugin-card', 'data-plugin': name },
      h('div', { class: 'section-head' }, h('h2', {}, name), rollback),
      h(
        'div',
        { class: 'plugin-body' },
        h('div', { class: 'versions' }, versionsTable(versions, promote)),
        h(
          'div',
          { class: 'shadow-report', 'data-testid': 'shadow-report' },
          h('h3', {}, 'Shadow agreement'),
          meanDice(rows),
          rows.length ? rows.map(agreement) : h('p', { class: 'empty' }, 'no series compared yet'),
        ),
      ),
    );
  };

  const render = changes(({ plugins, shadow }) => {
    const names = [...new Set(plugins.map((p) => p.name))].sort();
    const elsewhere = shadow.filter((row) => !names.some((n) => aboutPlugin(row, n)));
    const cards = names.map((name) =>
      card(
        name,
        plugins.filter((p) => p.name === name),
        shadow.filter((row) => aboutPlugin(row, name)),
      ),
    );
    holder.replaceChildren(
      ...cards,
      ...(names.length ? [] : [h('p', { class: 'empty' }, 'no plugins installed')]),
      ...(elsewhere.length ? [section('Other comparisons', elsewhere.map(agreement))] : []),
    );
  });

  load = async (force = false) => {
    const [plugins, report, routes] = await Promise.all([
      api('GET', '/api/plugins'),
      api('GET', '/api/shadow'),
      api('GET', '/api/routes').catch(() => null), // without it, no expected_digest
    ]);
    if (!view.alive()) return;
    digest = routes ? routes.digest : null;
    const rows = Array.isArray(report) ? report : (report && report.series) || [];
    render({ plugins, shadow: rows }, force);
    stamp.touch();
  };
  view.every(5000, () => load());
}
