// The record's pages: the overview, the studies, and one study with its timeline.

import { api, session } from './api.js';
import {
  JOB_STATES,
  adminButton,
  badge,
  bytes,
  changes,
  duration,
  enc,
  h,
  heading,
  link,
  notice,
  pressing,
  section,
  stateFilter,
  table,
  uid,
  updated,
  when,
} from './ui.js';

export const POLL_MS = 2000;
const STUDY_STATES = ['receiving', 'stable'];
export const OUTBOX_STATES = ['PENDING', 'SENT', 'DEAD'];
const showPatients = () => Boolean(session.me && session.me.show_patient_names);
const titled = (state) => state[0] + state.slice(1).toLowerCase();

// -- overview ---------------------------------------------------------------------------------
/** Counts by state, the known states first (zeros too), then any other the node reports. */
function countList(kind, known, counts, href) {
  const others = Object.keys(counts).filter((s) => !known.includes(s)).sort();
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const count = (state) =>
    h(
      'div',
      { class: `count ${counts[state] ? '' : 'zero'}` },
      h('dt', {}, link(href(state), badge(state, undefined, { title: state }))),
      h('dd', { 'data-testid': `count-${kind}-${state}` }, String(counts[state] || 0)),
    );
  return h(
    'dl',
    { class: 'counts', 'data-testid': `counts-${kind}` },
    [...known, ...others].map(count),
    h(
      'div',
      { class: 'count total' },
      h('dt', {}, 'total'),
      h('dd', { 'data-testid': `count-${kind}-total` }, String(total)),
    ),
  );
}

function outboxCounts(byDestination) {
  const cell = (state) => (name) => {
    const n = (byDestination[name] || {})[state] || 0;
    const css = state === 'DEAD' && n ? 'alarm' : '';
    return h('span', { class: css, 'data-testid': `count-outbox-${name}-${state}` }, String(n));
  };
  return table(
    [
      { title: 'Destination', cell: (name) => name },
      ...OUTBOX_STATES.map((state) => ({ title: titled(state), class: 'number', cell: cell(state) })),
    ],
    Object.keys(byDestination).sort(),
    {
      testid: 'outbox-counts',
      empty: 'no results owed to any destination yet',
      row: (name) => ({ 'data-destination': name }),
    },
  );
}

export function overviewPage(view) {
  const stamp = updated();
  const node = h('p', { class: 'node-line' });
  const body = h('div', { class: 'overview' });
  view.main.append(heading('Overview', stamp), node, body);
  const render = changes((s) => {
    node.replaceChildren(
      'Node ',
      h('strong', { 'data-testid': 'node-ae-title' }, s.ae_title),
      ` · ainode ${s.version} · `,
      h('strong', { 'data-testid': 'count-instances' }, String(s.instances)),
      ` instances stored (${bytes(s.stored_bytes)})`,
    );
    body.replaceChildren(
      section(
        'Studies by state',
        countList('studies', STUDY_STATES, s.studies_by_state || {}, (st) => `#/studies?state=${enc(st)}`),
      ),
      section(
        'Jobs by state',
        countList('jobs', JOB_STATES, s.jobs_by_state || {}, (st) => `#/jobs?state=${enc(st)}`),
      ),
      section(
        'Outbox per destination',
        outboxCounts(s.outbox_by_destination || {}),
        link('#/outbox', 'Outbox rows and dead letters →'),
      ),
    );
  });
  view.every(POLL_MS, async () => {
    const summary = await api('GET', '/api/summary');
    if (!view.alive()) return;
    render(summary);
    stamp.touch();
  });
}

// -- studies ----------------------------------------------------------------------------------
export function studiesPage(view) {
  const state = view.query.get('state') || '';
  const stamp = updated();
  const holder = h('div');
  const filter = stateFilter(STUDY_STATES, state, '#/studies', 'studies-filter');
  view.main.append(heading('Studies', filter, stamp), holder);
  const patients = showPatients() // only where the node is set to show them
    ? [
        { title: 'Patient', cell: (s) => s.patient_name || '—' },
        { title: 'Patient ID', cell: (s) => s.patient_id || '—' },
      ]
    : [];
  const render = changes((studies) => {
    holder.replaceChildren(
      table(
        [
          { title: 'Last received', cell: (s) => when(s.last_received_at, true) },
          ...patients,
          { title: 'Study date', cell: (s) => s.study_date || '—' },
          { title: 'Description', cell: (s) => s.study_description || '—' },
          { title: 'Modalities', cell: (s) => (s.modalities || []).join(', ') || '—' },
          { title: 'Instances', class: 'number', cell: (s) => String(s.instances) },
          { title: 'Version', class: 'number', cell: (s) => String(s.version) },
          { title: 'State', cell: (s) => badge(s.state, 'study-state') },
          {
            title: 'Study UID',
            cell: (s) => link(`#/studies/${enc(s.study_instance_uid)}`, uid(s.study_instance_uid)),
          },
        ],
        studies,
        {
          testid: 'studies',
          empty: 'no studies received',
          row: (s) => ({ 'data-testid': 'study-row', 'data-uid': s.study_instance_uid }),
        },
      ),
    );
  });
  view.every(POLL_MS, async () => {
    const filtered = state ? `&state=${enc(state)}` : '';
    const studies = await api('GET', `/api/studies?limit=100${filtered}`);
    if (!view.alive()) return;
    render(studies);
    stamp.touch();
  });
}

// -- one study --------------------------------------------------------------------------------
const ACTIVE = ['RUNNING', 'AWAITING_VENDOR', 'QUEUED'];

/** Where the newest version of a study is: receiving, stable, routed, or its jobs' state
 * (production jobs; shadow ones only when no production route matched). */
function studyPhase(study) {
  const versions = [...(study.versions || [])].sort((a, b) => b.version - a.version);
  const latest = versions[0];
  if (!latest || !latest.stable_at) return study.state || 'receiving';
  if (!latest.routed_at) return 'stable';
  const matches = latest.matches || [];
  if (!matches.length) return 'routed (no match)';
  const production = matches.filter((m) => m.mode !== 'shadow');
  const states = (production.length ? production : matches).map((m) => m.job_state || 'routed');
  if (states.includes('FAILED')) return 'FAILED';
  for (const active of ACTIVE) if (states.includes(active)) return active;
  if (states.includes('routed')) return 'routed';
  return states.includes('SUCCEEDED') ? 'SUCCEEDED' : states[0];
}

/** The timeline as a vertical list: the time since the step before on the left. */
function timelineList(entries) {
  if (!entries.length) return h('p', { class: 'empty' }, 'no events yet');
  const first = entries[0].at;
  const entry = (event, index) => {
    const gap = index ? event.at - entries[index - 1].at : null;
    const jobRef = event.job_id !== null && event.job_id !== undefined
      ? h('span', { class: 'job-ref' }, ' ', link(`#/jobs/${event.job_id}`, `job ${event.job_id}`))
      : null;
    const since = index ? ` (${duration(event.at - first)} after receipt)` : '';
    return h(
      'li',
      {
        class: `step step-${event.event.split(' ')[0]}`,
        'data-testid': 'timeline-entry',
        'data-event': event.event,
      },
      h('div', { class: 'gap', 'data-testid': 'timeline-gap' }, gap === null ? 'start' : `+${duration(gap)}`),
      h(
        'div',
        { class: 'what' },
        h('span', { class: 'event', 'data-testid': 'timeline-event' }, event.event),
        jobRef,
        event.detail ? h('div', { class: 'detail' }, event.detail) : null,
      ),
      h('div', { class: 'at' }, when(event.at), h('span', { class: 'since' }, since)),
    );
  };
  return h('ol', { class: 'timeline', 'data-testid': 'timeline' }, entries.map(entry));
}

const pluginRef = (m) => `${m.plugin}${m.plugin_version ? `@${m.plugin_version}` : ''}`;

function versionPanel(version) {
  const jobLink = (m) => (m.job_id !== null ? link(`#/jobs/${m.job_id}`, `#${m.job_id}`) : '—');
  const jobState = (m) =>
    badge(m.job_state || 'not queued', 'match-job-state', { 'data-job-id': m.job_id ?? '' });
  return h(
    'div',
    { class: 'version', 'data-testid': 'study-version', 'data-version': version.version },
    h(
      'h3',
      {},
      `Version ${version.version}`,
      h(
        'span',
        { class: 'sub' },
        ` ${version.instance_count} instances · stable `,
        when(version.stable_at),
        ' · routed ',
        when(version.routed_at),
      ),
    ),
    table(
      [
        { title: 'Route', cell: (m) => m.route },
        { title: 'Plugin', cell: pluginRef },
        { title: 'Mode', cell: (m) => badge(m.mode) },
        { title: 'Series', cell: (m) => uid(m.series_instance_uid, true) },
        { title: 'Destinations', cell: (m) => (m.destinations || []).join(', ') || '—' },
        { title: 'Job', cell: jobLink },
        { title: 'Job state', cell: jobState },
      ],
      version.matches || [],
      {
        testid: 'matches',
        empty: 'no route matched this version',
        row: (m) => ({ 'data-testid': 'match-row', 'data-route': m.route, 'data-plugin': m.plugin }),
      },
    ),
  );
}

function studyFacts(study) {
  const patient = showPatients() && (study.patient_name || study.patient_id)
    ? [h('dt', {}, 'Patient'), h('dd', {}, `${study.patient_name || '—'} (${study.patient_id || '—'})`)]
    : null;
  return h(
    'dl',
    { class: 'facts' },
    h('dt', {}, 'Study UID'),
    h('dd', { 'data-testid': 'study-uid' }, uid(study.study_instance_uid)),
    patient,
    h('dt', {}, 'State'),
    h('dd', {}, badge(study.state, 'study-state')),
    h('dt', {}, 'Description'),
    h('dd', {}, study.study_description || '—'),
    h('dt', {}, 'Study date'),
    h('dd', {}, study.study_date || '—'),
    h('dt', {}, 'Modalities'),
    h('dd', {}, (study.modalities || []).join(', ') || '—'),
    h('dt', {}, 'Received'),
    h('dd', {}, `${study.instances} instances, `, when(study.first_received_at), ' – ', when(study.last_received_at)),
    h('dt', {}, 'Version'),
    h('dd', {}, String(study.version)),
  );
}

function seriesTable(series) {
  return table(
    [
      { title: 'No.', class: 'number', cell: (s) => (s.series_number === null ? '—' : String(s.series_number)) },
      { title: 'Modality', cell: (s) => s.modality || '—' },
      { title: 'Body part', cell: (s) => s.body_part_examined || '—' },
      { title: 'Description', cell: (s) => s.series_description || '—' },
      { title: 'Instances', class: 'number', cell: (s) => String(s.instances) },
      { title: 'Series UID', cell: (s) => uid(s.series_instance_uid) },
    ],
    series,
    { testid: 'series', row: (s) => ({ 'data-testid': 'series-row', 'data-uid': s.series_instance_uid }) },
  );
}

export function studyPage(view) {
  const studyUid = view.params[0];
  const stamp = updated();
  const summary = h('div');
  const versionsHolder = h('div');
  const rerouted = h('div', { class: 'messages' });
  const timeline = h('div', { 'data-testid': 'timeline-holder' });
  const reroute = adminButton(
    'Route again with the current routes',
    (event) =>
      pressing(event.target, async () => {
        const answer = await api('POST', `/api/studies/${enc(studyUid)}/reroute`, {});
        const added = typeof answer.matches_added === 'number' ? ` ${answer.matches_added} new match(es).` : '';
        const detail = answer.detail || 'routed again.';
        rerouted.replaceChildren(notice(`Version ${answer.version}: ${detail}${added}`, 'ok', 'study-rerouted'));
      }),
    { 'data-testid': 'study-reroute', class: 'secondary' },
  );
  view.main.append(
    heading('Study', stamp),
    h(
      'p',
      { class: 'crumbs' },
      link('#/studies', '← all studies'),
      ' · ',
      link(`#/routes?explain=${enc(studyUid)}`, 'explain its routing'),
    ),
    summary,
    h(
      'section',
      { class: 'panel' },
      h('div', { class: 'section-head' }, h('h2', {}, 'Versions and route matches'), reroute),
      rerouted,
      versionsHolder,
    ),
    section(
      'Timeline',
      h(
        'p',
        { class: 'hint' },
        'Received → stable → routed → each job stage → sent; on the left, the time since the step before.',
      ),
      timeline,
    ),
  );
  const renderStudy = changes((study) => {
    const phase = studyPhase(study);
    const versions = [...(study.versions || [])].sort((a, b) => b.version - a.version);
    summary.replaceChildren(
      h(
        'div',
        { class: 'study-head' },
        h('div', { class: 'phase' }, 'Progress ', badge(phase, 'study-phase', { 'data-phase': phase })),
        studyFacts(study),
      ),
      section('Series', seriesTable(study.series || [])),
    );
    versionsHolder.replaceChildren(
      ...(versions.length ? versions.map(versionPanel) : [h('p', { class: 'empty' }, 'not stable yet')]),
    );
  });
  const renderTimeline = changes((entries) => {
    timeline.replaceChildren(timelineList([...entries].sort((a, b) => a.at - b.at)));
  });
  view.every(POLL_MS, async () => {
    const [study, entries] = await Promise.all([
      api('GET', `/api/studies/${enc(studyUid)}`),
      api('GET', `/api/studies/${enc(studyUid)}/timeline`),
    ]);
    if (!view.alive()) return;
    renderStudy(study);
    renderTimeline(entries);
    stamp.touch();
  });
}
