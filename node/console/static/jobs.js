// Jobs (retry, cancel), one job with its results and deliveries, and the outbox.

import { api } from './api.js';
import { OUTBOX_STATES, POLL_MS } from './pages.js';
import {
  JOB_STATES,
  adminButton,
  badge,
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

const pluginRef = (j) => `${j.plugin}${j.plugin_version ? `@${j.plugin_version}` : ''}`;
const ran = (j) => (j.started_at && j.finished_at ? duration(j.finished_at - j.started_at) : '—');
const studyLink = (j, short = true) =>
  link(`#/studies/${enc(j.study_instance_uid)}`, uid(j.study_instance_uid, short));

/** Retry and Cancel, enabled where the job's state allows it and the user is an admin;
 * ``after(answer, verb)`` shows what the node said. */
function jobButtons(job, after) {
  const act = (verb) => (event) =>
    pressing(event.target, async () => after(await api('POST', `/api/jobs/${job.id}/${verb}`, {}), verb));
  const retryable = ['FAILED', 'CANCELLED'].includes(job.state);
  const cancellable = ['QUEUED', 'RUNNING', 'AWAITING_VENDOR'].includes(job.state);
  return h(
    'span',
    { class: 'actions' },
    adminButton(
      'Retry',
      act('retry'),
      { 'data-testid': 'job-retry', 'data-job-id': job.id },
      retryable ? null : 'only a FAILED or CANCELLED job can be retried',
    ),
    adminButton(
      'Cancel',
      act('cancel'),
      { 'data-testid': 'job-cancel', 'data-job-id': job.id, class: 'danger' },
      cancellable ? null : 'only a QUEUED, RUNNING or AWAITING_VENDOR job can be cancelled',
    ),
  );
}

const changed = (answer, verb) =>
  notice(`Job ${answer.id}: ${verb === 'retry' ? 'queued again' : 'cancelled'}, now ${answer.state}.`);

export function jobsPage(view) {
  const state = view.query.get('state') || '';
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  const filter = stateFilter(JOB_STATES, state, '#/jobs', 'jobs-filter');
  view.main.append(heading('Jobs', filter, stamp), message, holder);
  let load = async () => {};
  const after = (answer, verb) => {
    message.replaceChildren(changed(answer, verb));
    load().catch(() => {});
  };
  const error = (j) => (j.error ? h('span', { title: j.error, 'data-testid': 'job-error' }, j.error) : '');
  const render = changes((jobs) => {
    holder.replaceChildren(
      table(
        [
          { title: 'Job', cell: (j) => link(`#/jobs/${j.id}`, `#${j.id}`) },
          { title: 'State', cell: (j) => badge(j.state, 'job-state') },
          { title: 'Plugin', cell: (j) => [`${pluginRef(j)} `, j.mode === 'shadow' ? badge('shadow') : null, j.urgency && j.urgency !== 'normal' ? badge(j.urgency) : null] },
          { title: 'Route', cell: (j) => j.route },
          { title: 'Study', cell: (j) => studyLink(j) },
          { title: 'Created', cell: (j) => when(j.created_at, true) },
          { title: 'Ran', class: 'number', cell: ran },
          { title: 'Tries', class: 'number', cell: (j) => h('span', { 'data-testid': 'job-attempts' }, String(j.attempts)) },
          { title: 'Worker', cell: (j) => h('span', { 'data-testid': 'job-worker' }, j.worker || '') },
          { title: 'Error', class: 'error-cell', cell: error },
          { title: '', cell: (j) => jobButtons(j, after) },
        ],
        jobs,
        {
          testid: 'jobs',
          empty: state ? `no ${state} jobs` : 'no jobs yet',
          row: (j) => ({ 'data-testid': 'job-row', 'data-job-id': j.id, 'data-state': j.state }),
        },
      ),
    );
  });
  load = async () => {
    const jobs = await api('GET', `/api/jobs?limit=100${state ? `&state=${enc(state)}` : ''}`);
    if (!view.alive()) return;
    render(jobs);
    stamp.touch();
  };
  view.every(POLL_MS, load);
}

function deliveries(result) {
  if (!(result.deliveries || []).length) return '—';
  const delivery = (d) =>
    h(
      'li',
      {},
      `${d.destination} `,
      badge(d.state),
      ` ${d.attempts} ${d.attempts === 1 ? 'try' : 'tries'} `,
      d.sent_at ? when(d.sent_at) : '',
      d.last_error ? h('span', { class: 'error-inline' }, ` ${d.last_error}`) : '',
    );
  return h('ul', { class: 'plain' }, result.deliveries.map(delivery));
}

export function jobPage(view) {
  const id = view.params[0];
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  const crumbs = h('p', { class: 'crumbs' }, link('#/jobs', '← all jobs'));
  view.main.append(heading(`Job #${id}`, stamp), crumbs, message, holder);
  let load = async () => {};
  const after = (answer, verb) => {
    message.replaceChildren(changed(answer, verb));
    load().catch(() => {});
  };
  const render = changes((job) => {
    holder.replaceChildren(
      h(
        'div',
        { class: 'study-head' },
        h('div', { class: 'phase' }, badge(job.state, 'job-detail-state'), ' ', jobButtons(job, after)),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'Plugin'),
          h('dd', {}, `${pluginRef(job)} (${job.mode})`),
          h('dt', {}, 'Route'),
          h('dd', {}, job.route),
          h('dt', {}, 'Study'),
          h('dd', {}, studyLink(job, false), job.study_version ? ` (version ${job.study_version})` : ''),
          h('dt', {}, 'Series'),
          h('dd', {}, uid(job.series_instance_uid)),
          h('dt', {}, 'Destinations'),
          h('dd', {}, (job.destinations || []).join(', ') || 'none'),
          h('dt', {}, 'Created / started / finished'),
          h('dd', {}, when(job.created_at), ' / ', when(job.started_at), ' / ', when(job.finished_at)),
          h('dt', {}, 'Tries'),
          h('dd', {}, String(job.attempts)),
          h('dt', {}, 'Worker'),
          h('dd', { 'data-testid': 'job-worker' }, job.worker || 'not yet'),
        ),
      ),
      job.error ? h('pre', { class: 'error-text-block', 'data-testid': 'job-error' }, job.error) : '',
      section(
        'Stages',
        table(
          [
            { title: 'Stage', cell: ([stage]) => stage },
            { title: 'Took', class: 'number', cell: ([, seconds]) => duration(seconds) },
          ],
          Object.entries(job.timings || {}),
          { empty: 'no stage has run' },
        ),
      ),
      section(
        'Results and deliveries',
        table(
          [
            { title: 'Kind', cell: (r) => r.kind },
            { title: 'SOP Instance UID', cell: (r) => uid(r.sop_instance_uid) },
            { title: 'Created', cell: (r) => when(r.created_at, true) },
            { title: 'Deliveries', cell: deliveries },
          ],
          job.results || [],
          { empty: 'no results', row: () => ({ 'data-testid': 'result-row' }) },
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

// -- outbox -----------------------------------------------------------------------------------
export function outboxPage(view) {
  const stamp = updated();
  const message = h('div', { class: 'messages' });
  const holder = h('div');
  const retryAll = h('span');
  view.main.append(heading('Outbox', retryAll, stamp), message, holder);
  let load = async () => {};
  const retryDead = (destination) => (event) =>
    pressing(event.target, async () => {
      const answer = await api('POST', '/api/outbox/retry-dead', destination ? { destination } : {});
      const where = destination ? ` for ${destination}` : '';
      message.replaceChildren(notice(`${answer.retried} dead letter(s) queued again${where}.`, 'ok', 'outbox-retried'));
      await load();
    });
  const render = changes((outbox) => {
    const counts = outbox.destinations || {};
    const dead = Object.values(counts).reduce((n, c) => n + (c.DEAD || 0), 0);
    retryAll.replaceChildren(
      adminButton('Retry dead letters', retryDead(null), { 'data-testid': 'outbox-retry-dead' }, dead ? null : 'no dead letters'),
    );
    const retryOne = (name) =>
      adminButton(
        'Retry its dead letters',
        retryDead(name),
        { class: 'secondary', 'data-testid': 'outbox-retry-destination', 'data-destination': name },
        counts[name].DEAD ? null : 'no dead letters',
      );
    holder.replaceChildren(
      section(
        'Destinations',
        table(
          [
            { title: 'Destination', cell: (name) => name },
            ...OUTBOX_STATES.map((s) => ({ title: s, class: 'number', cell: (name) => String(counts[name][s] || 0) })),
            { title: '', cell: retryOne },
          ],
          Object.keys(counts).sort(),
          { testid: 'outbox-destinations', empty: 'no destinations', row: (name) => ({ 'data-destination': name }) },
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
            { title: 'Next try', cell: (r) => (r.state === 'PENDING' ? when(r.next_attempt_at, true) : '—') },
            {
              title: 'Last error',
              class: 'error-cell',
              cell: (r) => (r.last_error ? h('span', { title: r.last_error }, r.last_error) : ''),
            },
            { title: 'Job', cell: (r) => link(`#/jobs/${r.job_id}`, `#${r.job_id}`) },
            { title: 'SOP Instance UID', cell: (r) => uid(r.sop_instance_uid, true) },
          ],
          outbox.rows || [],
          {
            testid: 'outbox-rows',
            empty: 'nothing waiting, no dead letters',
            row: (r) => ({ 'data-testid': 'outbox-row', 'data-state': r.state }),
          },
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
