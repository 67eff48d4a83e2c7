// The record's pages: overview, studies, one study (with its timeline), jobs, one job, outbox.

import {
  JOB_STATES,
  adminButton,
  api,
  badge,
  bytes,
  clock,
  duration,
  h,
  link,
  notice,
  pressing,
  section,
  session,
  table,
  uid,
  when,
} from './api.js';

const POLL_MS = 2000;

/** Calls render(data) only when the answer changed, so a poll does not rebuild what is
 * unchanged (nor steal a click or a selection). */
export function changes(render) {
  let last = null;
  return (data, force = false) => {
    const now = JSON.stringify(data);
    if (!force && now === last) return;
    last = now;
    render(data);
  };
}

export function heading(title, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', {}, title), ...extra);
}

export function updated() {
  const stamp = h('span', { class: 'updated', 'data-testid': 'updated-at' }, '');
  stamp.touch = () => {
    stamp.textContent = `updated ${clock(Date.now() / 1000)}`;
  };
  return stamp;
}

const enc = encodeURIComponent;
const showPatients = () => Boolean(session.me && session.me.show_patient_names);

// -- overview --------------------------------------------------------------------------------
const STUDY_STATES = ['receiving', 'stable'];
const OUTBOX_STATES = ['PENDING', 'SENT', 'DEAD'];

function countList(kind, known, counts, href) {
  const states = [...known, ...Object.keys(counts).filter((s) => !known.includes(s)).sort()];
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return h(
    'dl',
    { class: 'counts', 'data-testid': `counts-${kind}` },
    states.map((state) =>
      h(
        'div',
        { class: `count ${counts[state] ? '' : 'zero'}` },
        h('dt', {}, href ? link(href(state), badge(state)) : badge(state)),
        h('dd', { 'data-testid': `count-${kind}-${state}` }, String(counts[state] || 0)),
      ),
    ),
    h('div', { class: 'count total' }, h('dt', {}, 'total'), h('dd', { 'data-testid': `count-${kind}-total` }, String(total))),
  );
}

export function overviewPage(view) {
  const stamp = updated();
  const body = h('div', { class: 'overview' });
  view.main.append(heading('Overview', stamp), body);
  const render = changes((s) => {
    const destinations = Object.keys(s.outbox_by_destination || {}).sort();
    body.replaceChildren(
      section(
        'Node',
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'AE title'),
          h('dd', { 'data-testid': 'node-ae-title' }, s.ae_title),
          h('dt', {}, 'Version'),
          h('dd', {}, s.version),
          h('dt', {}, 'Instances stored'),
          h('dd', { 'data-testid': 'count-instances' }, String(s.instances)),
          h('dt', {}, 'Stored'),
          h('dd', {}, bytes(s.stored_bytes)),
        ),
      ),
      section('Studies by state', countList('studies', STUDY_STATES, s.studies_by_state || {}, (st) => `#/studies?state=${enc(st)}`)),
      section('Jobs by state', countList('jobs', JOB_STATES, s.jobs_by_state || {}, (st) => `#/jobs?state=${enc(st)}`)),
      section(
        'Outbox per destination',
        table(
          [
            { title: 'Destination', cell: (d) => d },
            ...OUTBOX_STATES.map((state) => ({
              title: state,
              class: 'number',
              cell: (d) => {
                const n = (s.outbox_by_destination[d] || {})[state] || 0;
                return h('span', { class: state === 'DEAD' && n ? 'alarm' : '', 'data-testid': `count-outbox-${d}-${state}` }, String(n));
              },
            })),
          ],
          destinations,
          { testid: 'outbox-counts', empty: 'no results owed to any destination yet', row: (d) => ({ 'data-destination': d }) },
        ),
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

// -- studies ---------------------------------------------------------------------------------
function stateFilter(states, current, base, testid) {
  const select = h(
    'select',
    { 'data-testid': testid, 'aria-label': 'state' },
    h('option', { value: '' }, 'every state'),
    states.map((s) => h('option', { value: s, selected: s === current }, s)),
  );
  select.addEventListener('change', () => {
    location.hash = select.value ? `${base}?state=${enc(select.value)}` : base;
  });
  return h('label', { class: 'filter' }, 'Show ', select);
}

export function studiesPage(view) {
  const state = view.query.get('state') || '';
  const stamp = updated();
  const holder = h('div');
  view.main.append(heading('Studies', stateFilter(STUDY_STATES, state, '#/studies', 'studies-filter'), stamp), holder);
  const patients = showPatients();
  const render = changes((studies) => {
    holder.replaceChildren(
      table(
        [
          { title: 'Last received', cell: (s) => when(s.last_received_at) },
          ...(patients
            ? [
                { title: 'Patient', cell: (s) => s.patient_name || '—' },
                { title: 'Patient ID', cell: (s) => s.patient_id || '—' },
              ]
            : []),
          { title: 'Study date', cell: (s) => s.study_date || '—' },
          { title: 'Description', cell: (s) => s.study_description || '—' },
          { title: 'Modalities', cell: (s) => (s.modalities || []).join(', ') || '—' },
          { title: 'Instances', class: 'number', cell: (s) => String(s.instances) },
          { title: 'Version', class: 'number', cell: (s) => String(s.version) },
          { title: 'State', cell: (s) => badge(s.state, 'study-state') },
          { title: 'Study UID', cell: (s) => link(`#/studies/${enc(s.study_instance_uid)}`, uid(s.study_instance_uid)) },
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
    const studies = await api('GET', `/api/studies?limit=100${state ? `&state=${enc(state)}` : ''}`);
    if (!view.alive()) return;
    render(studies);
    stamp.touch();
  });
}

// -- one study -------------------------------------------------------------------------------
const ACTIVE = ['RUNNING', 'AWAITING_VENDOR', 'QUEUED'];

/** Where the newest version of a study is: receiving, stable, routed, or its jobs' state
 * (production jobs; shadow jobs only when no production route matched). */
export function studyPhase(study) {
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
  if (states.every((s) => s === 'SUCCEEDED')) return 'SUCCEEDED';
  return states.includes('SUCCEEDED') ? 'SUCCEEDED' : states[0];
}

function timelineList(entries) {
  if (!entries.length) return h('p', { class: 'empty' }, 'no events yet');
  const first = entries[0].at;
  return h(
    'ol',
    { class: 'timeline', 'data-testid': 'timeline' },
    entries.map((entry, index) => {
      const gap = index ? entry.at - entries[index - 1].at : null;
      const kind = entry.event.split(' ')[0];
      return h(
        'li',
        { class: `step step-${kind}`, 'data-testid': 'timeline-entry', 'data-event': entry.event },
        h(
          'div',
          { class: 'gap', 'data-testid': 'timeline-gap' },
          gap === null ? 'start' : `+${duration(gap)}`,
        ),
        h(
          'div',
          { class: 'what' },
          h('span', { class: 'event', 'data-testid': 'timeline-event' }, entry.event),
          entry.job_id != null ? h('span', { class: 'job-ref' }, ' ', link(`#/jobs/${entry.job_id}`, `job ${entry.job_id}`)) : null,
          entry.detail ? h('div', { class: 'detail' }, entry.detail) : null,
        ),
        h('div', { class: 'at' }, when(entry.at), h('span', { class: 'since' }, index ? ` (${duration(entry.at - first)} after receipt)` : '')),
      );
    }),
  );
}

function versionPanel(version) {
  return h(
    'div',
    { class: 'version', 'data-testid': 'study-version', 'data-version': version.version },
    h(
      'h3',
      {},
      `Version ${version.version}`,
      h('span', { class: 'sub' }, ` ${version.instance_count} instances · stable `, when(version.stable_at), ' · routed ', when(version.routed_at)),
    ),
    table(
      [
        { title: 'Route', cell: (m) => m.route },
        { title: 'Plugin', cell: (m) => `${m.plugin}${m.plugin_version ? `@${m.plugin_version}` : ''}` },
        { title: 'Mode', cell: (m) => badge(m.mode) },
        { title: 'Series', cell: (m) => uid(m.series_instance_uid, true) },
        { title: 'Destinations', cell: (m) => (m.destinations || []).join(', ') || '—' },
        { title: 'Job', cell: (m) => (m.job_id != null ? link(`#/jobs/${m.job_id}`, `#${m.job_id}`) : '—') },
        { title: 'Job state', cell: (m) => badge(m.job_state || 'not queued', 'match-job-state', { 'data-job-id': m.job_id ?? '' }) },
      ],
      version.matches || [],
      { testid: 'matches', empty: 'no route matched this version', row: (m) => ({ 'data-testid': 'match-row', 'data-route': m.route, 'data-plugin': m.plugin }) },
    ),
  );
}

export function studyPage(view) {
  const studyUid = view.params[0];
  const stamp = updated();
  const summary = h('div');
  const timeline = h('div', { 'data-testid': 'timeline-holder' });
  const reroutes = h('div');
  view.main.append(
    heading('Study', stamp),
    h('p', { class: 'crumbs' }, link('#/studies', '← all studies'), ' · ', link(`#/routes?explain=${enc(studyUid)}`, 'explain its routing')),
    summary,
    reroutes,
    section('Timeline', h('p', { class: 'hint' }, 'Received → stable → routed → each job stage → sent; the left column is the time since the step before.'), timeline),
  );
  const renderStudy = changes((study) => {
    const phase = studyPhase(study);
    const patients = showPatients() && (study.patient_name || study.patient_id);
    const versions = [...(study.versions || [])].sort((a, b) => b.version - a.version);
    summary.replaceChildren(
      h(
        'div',
        { class: 'study-head' },
        h('div', { class: 'phase' }, 'Progress ', badge(phase, 'study-phase', { 'data-phase': phase })),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'Study UID'),
          h('dd', { 'data-testid': 'study-uid' }, uid(study.study_instance_uid)),
          patients ? [h('dt', {}, 'Patient'), h('dd', {}, `${study.patient_name || '—'} (${study.patient_id || '—'})`)] : null,
          h('dt', {}, 'State'),
          h('dd', {}, badge(study.state, 'study-state')),
          h('dt', {}, 'Description'),
          h('dd', {}, study.study_description || '—', study.study_date ? ` (${study.study_date})` : ''),
          h('dt', {}, 'Modalities'),
          h('dd', {}, (study.modalities || []).join(', ') || '—'),
          h('dt', {}, 'Received'),
          h('dd', {}, `${study.instances} instances, `, when(study.first_received_at), ' – ', when(study.last_received_at)),
          h('dt', {}, 'Version'),
          h('dd', {}, String(study.version)),
        ),
      ),
      section(
        'Series',
        table(
          [
            { title: 'No.', class: 'number', cell: (s) => (s.series_number == null ? '—' : String(s.series_number)) },
            { title: 'Modality', cell: (s) => s.modality || '—' },
            { title: 'Body part', cell: (s) => s.body_part_examined || '—' },
            { title: 'Description', cell: (s) => s.series_description || '—' },
            { title: 'Instances', class: 'number', cell: (s) => String(s.instances) },
            { title: 'Series UID', cell: (s) => uid(s.series_instance_uid) },
          ],
          study.series || [],
          { testid: 'series', row: (s) => ({ 'data-testid': 'series-row', 'data-uid': s.series_instance_uid }) },
        ),
      ),
      section('Versions and route matches', versions.length ? versions.map(versionPanel) : h('p', { class: 'empty' }, 'not stable yet')),
    );
  });
  const renderTimeline = changes((entries) => {
    timeline.replaceChildren(timelineList([...entries].sort((a, b) => a.at - b.at)));
  });
  reroutes.append(
    adminButton(
      'Route again with the current routes',
      (event) =>
        pressing(event.target, async () => {
          const answer = await api('POST', `/api/studies/${enc(studyUid)}/reroute`, {});
          const added = answer.matches_added == null ? '' : ` ${answer.matches_added} new match(es).`;
          reroutes.replaceChildren(reroutes.firstChild, notice(`Version ${answer.version}: ${answer.detail || 'routed again.'}${added}`));
        }),
      { 'data-testid': 'study-reroute', class: 'secondary' },
    ),
  );
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

// -- jobs ------------------------------------------------------------------------------------
/** Retry and cancel, enabled where the job's state allows and the user is an admin. */
function jobButtons(job, after) {
  const act = (verb) => (event) =>
    pressing(event.target, async () => {
      const answer = await api('POST', `/api/jobs/${job.id}/${verb}`, {});
      after(answer, verb);
    });
  const retryable = ['FAILED', 'CANCELLED'].includes(job.state);
  const cancellable = ['QUEUED', 'RUNNING'].includes(job.state);
  return h(
    'span',
    { class: 'actions' },
    adminButton('Retry', act('retry'), { 'data-testid': 'job-retry', 'data-job-id': job.id }, retryable ? null : 'only a FAILED or CANCELLED job can be retried'),
    adminButton('Cancel', act('cancel'), { 'data-testid': 'job-cancel', 'data-job-id': job.id, class: 'danger' }, cancellable ? null : 'only a QUEUED or RUNNING job can be cancelled'),
  );
}

const jobDuration = (j) => (j.started_at && j.finished_at ? duration(j.finished_at - j.started_at) : '—');

export function jobsPage(view) {
  const state = view.query.get('state') || '';
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  view.main.append(heading('Jobs', stateFilter(JOB_STATES, state, '#/jobs', 'jobs-filter'), stamp), message, holder);
  let refresh = () => {};
  const after = (answer, verb) => {
    message.replaceChildren(notice(`Job ${answer.id}: ${verb === 'retry' ? 'queued again' : 'cancelled'}, now ${answer.state}.`));
    refresh();
  };
  const render = changes((jobs) => {
    holder.replaceChildren(
      table(
        [
          { title: 'Job', cell: (j) => link(`#/jobs/${j.id}`, `#${j.id}`) },
          { title: 'State', cell: (j) => badge(j.state, 'job-state') },
          { title: 'Plugin', cell: (j) => `${j.plugin}${j.plugin_version ? `@${j.plugin_version}` : ''}` },
          { title: 'Mode', cell: (j) => badge(j.mode) },
          { title: 'Route', cell: (j) => j.route },
          { title: 'Study', cell: (j) => link(`#/studies/${enc(j.study_instance_uid)}`, uid(j.study_instance_uid, true)) },
          { title: 'Created', cell: (j) => when(j.created_at) },
          { title: 'Ran', class: 'number', cell: jobDuration },
          { title: 'Tries', class: 'number', cell: (j) => h('span', { 'data-testid': 'job-attempts' }, String(j.attempts)) },
          { title: 'Error', class: 'error-cell', cell: (j) => (j.error ? h('span', { title: j.error, 'data-testid': 'job-error' }, j.error) : '') },
          { title: '', cell: (j) => jobButtons(j, after) },
        ],
        jobs,
        { testid: 'jobs', empty: state ? `no ${state} jobs` : 'no jobs yet', row: (j) => ({ 'data-testid': 'job-row', 'data-job-id': j.id, 'data-state': j.state }) },
      ),
    );
  });
  const load = async () => {
    const jobs = await api('GET', `/api/jobs?limit=100${state ? `&state=${enc(state)}` : ''}`);
    if (!view.alive()) return;
    render(jobs);
    stamp.touch();
  };
  refresh = () => load().catch(() => {});
  view.every(POLL_MS, load);
}

export function jobPage(view) {
  const id = view.params[0];
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  view.main.append(heading(`Job #${id}`, stamp), h('p', { class: 'crumbs' }, link('#/jobs', '← all jobs')), message, holder);
  let load = async () => {};
  const render = changes((job) => {
    const timings = Object.entries(job.timings || {});
    holder.replaceChildren(
      h(
        'div',
        { class: 'study-head' },
        h('div', { class: 'phase' }, badge(job.state, 'job-state'), ' ', jobButtons(job, (answer, verb) => {
          message.replaceChildren(notice(`Job ${answer.id}: ${verb === 'retry' ? 'queued again' : 'cancelled'}, now ${answer.state}.`));
          load().catch(() => {});
        })),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'Plugin'),
          h('dd', {}, `${job.plugin}${job.plugin_version ? `@${job.plugin_version}` : ''} (${job.mode})`),
          h('dt', {}, 'Route'),
          h('dd', {}, job.route),
          h('dt', {}, 'Study'),
          h('dd', {}, link(`#/studies/${enc(job.study_instance_uid)}`, uid(job.study_instance_uid))),
          h('dt', {}, 'Series'),
          h('dd', {}, uid(job.series_instance_uid)),
          h('dt', {}, 'Created / started / finished'),
          h('dd', {}, when(job.created_at), ' / ', when(job.started_at), ' / ', when(job.finished_at)),
          h('dt', {}, 'Tries'),
          h('dd', {}, String(job.attempts)),
        ),
        job.error ? h('pre', { class: 'error-text-block', 'data-testid': 'job-error' }, job.error) : null,
      ),
      section(
        'Stages',
        table([{ title: 'Stage', cell: ([s]) => s }, { title: 'Seconds', class: 'number', cell: ([, v]) => duration(v) }], timings, { empty: 'no stage timings' }),
      ),
      section(
        'Results and deliveries',
        table(
          [
            { title: 'Kind', cell: (r) => r.kind },
            { title: 'SOP Instance UID', cell: (r) => uid(r.sop_instance_uid) },
            { title: 'Created', cell: (r) => when(r.created_at) },
            {
              title: 'Deliveries',
              cell: (r) =>
                (r.deliveries || []).length
                  ? h('ul', { class: 'plain' }, r.deliveries.map((d) => h('li', {}, `${d.destination} `, badge(d.state), ` ${d.attempts} tries `, d.sent_at ? when(d.sent_at) : '', d.last_error ? h('span', { class: 'error-inline' }, ` ${d.last_error}`) : '')))
                  : '—',
            },
          ],
          job.results || [],
          { empty: 'no results', row: (r) => ({ 'data-testid': 'result-row' }) },
        ),
      ),
    );
  });
  load = async () => {
    const job = await api('GET', `/api/jobs/${id}`);
    if (!view.alive()) return;
    render(job);
    stamp.touch();
  };
  view.every(POLL_MS, load);
}

// -- outbox ----------------------------------------------------------------------------------
export function outboxPage(view) {
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  let load = async () => {};
  const retryDead = (destination) => (event) =>
    pressing(event.target, async () => {
      const answer = await api('POST', '/api/outbox/retry-dead', destination ? { destination } : {});
      message.replaceChildren(notice(`${answer.retried} dead letter(s) queued again${destination ? ` for ${destination}` : ''}.`, 'ok', 'outbox-retried'));
      await load();
    });
  const deadTotal = (o) => Object.values(o.destinations || {}).reduce((n, c) => n + (c.DEAD || 0), 0);
  const retryAll = h('span');
  view.main.append(heading('Outbox', retryAll, stamp), message, holder);
  const render = changes((outbox) => {
    const destinations = Object.keys(outbox.destinations || {}).sort();
    const dead = deadTotal(outbox);
    retryAll.replaceChildren(adminButton('Retry dead letters', retryDead(null), { 'data-testid': 'outbox-retry-dead' }, dead ? null : 'no dead letters'));
    holder.replaceChildren(
      section(
        'Destinations',
        table(
          [
            { title: 'Destination', cell: (d) => d },
            ...OUTBOX_STATES.map((s) => ({ title: s, class: 'number', cell: (d) => String(outbox.destinations[d][s] || 0) })),
            { title: '', cell: (d) => adminButton('Retry its dead letters', retryDead(d), { class: 'secondary', 'data-testid': 'outbox-retry-destination', 'data-destination': d }, outbox.destinations[d].DEAD ? null : 'no dead letters') },
          ],
          destinations,
          { testid: 'outbox-destinations', empty: 'nothing sent or owed yet', row: (d) => ({ 'data-destination': d }) },
        ),
      ),
      section(
        'Waiting and dead letters',
        table(
          [
            { title: 'Row', cell: (r) => `#${r.id}` },
            { title: 'Destination', cell: (r) => r.destination },
            { title: 'State', cell: (r) => badge(r.state, 'outbox-state') },
            { title: 'Tries', class: 'number', cell: (r) => String(r.attempts) },
            { title: 'Next try', cell: (r) => (r.state === 'PENDING' ? when(r.next_attempt_at) : '—') },
            { title: 'Last error', class: 'error-cell', cell: (r) => (r.last_error ? h('span', { title: r.last_error }, r.last_error) : '') },
            { title: 'Job', cell: (r) => (r.job_id != null ? link(`#/jobs/${r.job_id}`, `#${r.job_id}`) : '—') },
            { title: 'SOP Instance UID', cell: (r) => uid(r.sop_instance_uid, true) },
          ],
          outbox.rows || [],
          { testid: 'outbox-rows', empty: 'nothing waiting, no dead letters', row: (r) => ({ 'data-testid': 'outbox-row', 'data-state': r.state }) },
        ),
      ),
    );
  });
  load = async () => {
    const outbox = await api('GET', '/api/outbox');
    if (!view.alive()) return;
    render(outbox);
    stamp.touch();
  };
  view.every(POLL_MS, load);
}
