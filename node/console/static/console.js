// The console's shell: hash routing, the login page, the header and its navigation.
// A page is a function (view) that fills view.main and may poll with view.every(ms, fn);
// leaving the page stops its polls, and answers that arrive after it are dropped.

import { ApiError, api, clearError, onUnauthorized, session, showError } from './api.js';
import { actionsPage, latencyPage } from './activity.js';
import { jobPage, jobsPage, outboxPage } from './jobs.js';
import { overviewPage, studiesPage, studyPage } from './pages.js';
import { pluginsPage } from './plugins.js';
import { routesPage } from './routes.js';
import { button, h } from './ui.js';

const PAGES = [
  [/^\/overview$/, overviewPage, 'overview'],
  [/^\/studies$/, studiesPage, 'studies'],
  [/^\/studies\/(.+)$/, studyPage, 'studies'],
  [/^\/jobs$/, jobsPage, 'jobs'],
  [/^\/jobs\/(\d+)$/, jobPage, 'jobs'],
  [/^\/outbox$/, outboxPage, 'outbox'],
  [/^\/plugins$/, pluginsPage, 'plugins'],
  [/^\/routes$/, routesPage, 'routes'],
  [/^\/latency$/, latencyPage, 'latency'],
  [/^\/actions$/, actionsPage, 'actions'],
];
const NAV = [
  ['overview', 'Overview'],
  ['studies', 'Studies'],
  ['jobs', 'Jobs'],
  ['outbox', 'Outbox'],
  ['plugins', 'Plugins'],
  ['routes', 'Routes'],
  ['latency', 'Latency'],
  ['actions', 'Actions'],
];

let generation = 0;
let stops = [];
let afterLogin = '#/overview';

function parseHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, '')) || '/overview';
  const [path, search = ''] = raw.split('?');
  return { path, query: new URLSearchParams(search) };
}

function leave() {
  generation += 1;
  for (const stop of stops) stop();
  stops = [];
}

function makeView(main, params, query) {
  const mine = generation;
  const alive = () => mine === generation;
  return {
    main,
    params,
    query,
    alive,
    /** Call fn now and then every ms after each call ends, while this page is shown. */
    every(ms, fn) {
      let timer = null;
      const tick = async () => {
        if (!alive()) return;
        try {
          await fn();
        } catch (error) {
          if (!(error instanceof ApiError)) showError(String(error));
        }
        if (alive()) timer = setTimeout(tick, ms);
      };
      stops.push(() => clearTimeout(timer));
      tick();
    },
  };
}

function renderHeader(active) {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  nav.replaceChildren(
    ...NAV.map(([key, label]) =>
      h('a', { href: `#/${key}`, class: key === active ? 'active' : '', 'data-testid': `nav-${key}` }, label),
    ),
  );
  const me = session.me;
  nav.hidden = !me;
  who.replaceChildren(
    ...(me
      ? [
          h('span', { 'data-testid': 'who' }, `${me.user} `, h('span', { class: `role role-${me.role}` }, me.role)),
          button('Log out', logout, { 'data-testid': 'logout', class: 'quiet' }),
        ]
      : []),
  );
}

async function route() {
  leave();
  clearError();
  const main = document.getElementById('main');
  const { path, query } = parseHash();
  if (!session.me && path !== '/login') {
    afterLogin = location.hash || '#/overview';
    location.hash = '#/login';
    return;
  }
  if (path === '/login') {
    renderHeader(null);
    main.replaceChildren(loginPage());
    return;
  }
  for (const [pattern, page, active] of PAGES) {
    const match = path.match(pattern);
    if (match) {
      renderHeader(active);
      main.replaceChildren();
      main.dataset.page = active;
      page(makeView(main, match.slice(1), query));
      return;
    }
  }
  main.replaceChildren(h('p', { class: 'notice notice-error' }, `No page ${path}.`));
}

function loginPage() {
  const message = h('p', { class: 'notice notice-error', 'data-testid': 'login-error', hidden: true });
  const byPassword = () => ({ username: user.value, password: password.value });
  const done = (me) => {
    session.me = me;
    location.hash = afterLogin === '#/login' ? '#/overview' : afterLogin;
  };
  const fail = (error) => {
    message.textContent = error.status === 401 ? 'Wrong user name, password or token.' : error.message;
    message.hidden = false;
  };
  const submit = (body) => async (event) => {
    event.preventDefault();
    const submitter = event.target.querySelector('button');
    submitter.disabled = true;
    try {
      done(await api('POST', '/api/login', body(), { quiet: true }));
    } catch (error) {
      fail(error);
    } finally {
      submitter.disabled = false;
    }
  };
  const field = (id, props) => h('input', { id: `login-${id}`, required: true, 'data-testid': `login-${id}`, ...props });
  const user = field('user', { name: 'username', autocomplete: 'username' });
  const password = field('password', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const token = field('token', { name: 'token', type: 'password', autocomplete: 'off' });
  return h(
    'div',
    { class: 'login', 'data-testid': 'login-page' },
    h('h1', {}, 'Log in to the ainode console'),
    message,
    h(
      'div',
      { class: 'login-forms' },
      h(
        'form',
        { class: 'panel', onsubmit: submit(byPassword) },
        h('h2', {}, 'User and password'),
        h('label', { for: 'login-user' }, 'User'),
        user,
        h('label', { for: 'login-password' }, 'Password'),
        password,
        h('button', { type: 'submit', 'data-testid': 'login-submit' }, 'Log in'),
      ),
      h(
        'form',
        { class: 'panel', onsubmit: submit(() => ({ token: token.value.trim() })) },
        h('h2', {}, 'API token'),
        h('label', { for: 'login-token' }, 'Token'),
        token,
        h('p', { class: 'hint' }, 'The first admin token is in <data_dir>/console/admin-token.'),
        h('button', { type: 'submit', 'data-testid': 'login-token-submit' }, 'Log in with token'),
      ),
    ),
  );
}

async function logout() {
  try {
    await api('POST', '/api/logout');
  } catch {
    // logged out or not, the page forgets the login
  }
  session.me = null;
  afterLogin = '#/overview';
  location.hash = '#/login';
}

async function boot() {
  document.getElementById('error-close').addEventListener('click', () => clearError());
  onUnauthorized(() => {
    if (!session.me) return;
    session.me = null;
    afterLogin = location.hash;
    location.hash = '#/login';
  });
  try {
    session.me = await api('GET', '/api/me', undefined, { quiet: true });
  } catch (error) {
    if (error.status !== 401) showError(error.message);
  }
  window.addEventListener('hashchange', route);
  route();
}

boot();
