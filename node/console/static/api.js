// The console's plumbing: calls to /api (CSRF header on changes, one visible error line),
// DOM building without innerHTML (every value from the API goes in as text), formatting.

export const session = { me: null }; // Me {user, role, csrf_token, show_patient_names}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let unauthorized = () => {};
export function onUnauthorized(callback) {
  unauthorized = callback;
}

// -- the error line --------------------------------------------------------------------------
let errorKey = null;

export function showError(message, key = null) {
  const line = document.getElementById('error');
  line.querySelector('.error-text').textContent = `${clock(Date.now() / 1000)}  ${message}`;
  line.hidden = false;
  errorKey = key;
}

export function clearError(key = undefined) {
  if (key !== undefined && key !== errorKey) return;
  document.getElementById('error').hidden = true;
  errorKey = null;
}

/** A FastAPI ``detail``: a string, a list of validation errors, or an object. */
export function describeDetail(body) {
  if (body == null) return '';
  if (typeof body === 'string') return body.trim().slice(0, 500);
  const detail = body.detail !== undefined ? body.detail : body;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => (typeof d === 'string' ? d : d.msg ? `${(d.loc || []).join('.')}: ${d.msg}` : JSON.stringify(d)))
      .join('; ');
  }
  if (detail && typeof detail === 'object') {
    if (Array.isArray(detail.errors)) return detail.errors.map(text).join('; ');
    if (detail.message) return String(detail.message);
    if (detail.reason) return String(detail.reason);
  }
  return JSON.stringify(detail);
}

/** One API call. Throws ApiError (already on the error line unless ``quiet``). */
export async function api(method, path, body = undefined, { quiet = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session.me && session.me.csrf_token) {
    headers['X-CSRF-Token'] = session.me.csrf_token;
  }
  const key = `${method} ${path}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (error) {
    const failure = new ApiError(0, `${key}: no answer from the node (${error.message})`, null);
    if (!quiet) showError(failure.message, key);
    throw failure;
  }
  const raw = response.status === 204 ? '' : await response.text();
  let data = null;
  if (raw) {
    try {
      data = JSON.parse(raw);
    } catch {
      data = raw;
    }
  }
  if (!response.ok) {
    const failure = new ApiError(
      response.status,
      `${key} failed: ${response.status} ${response.statusText} ${describeDetail(data)}`.trim(),
      data,
    );
    if (response.status === 401 && path !== '/api/login' && path !== '/api/me') {
      unauthorized();
    }
    if (!quiet) showError(failure.message, key);
    throw failure;
  }
  clearError(key);
  return data;
}

export const isAdmin = () => Boolean(session.me && session.me.role === 'admin');
export const ADMIN_ONLY = 'needs the admin role (you are logged in as a viewer)';

// -- DOM -------------------------------------------------------------------------------------
/** h('td', {class: 'uid', 'data-testid': 'x', onclick: f}, child, 'text', [more]) */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') element.className = value;
    else if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'value') element.value = value;
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** A table: columns [{title, cell(row) -> Node|string, class?}], row(row) -> extra props. */
export function table(columns, rows, { row = () => ({}), empty = 'nothing yet', testid } = {}) {
  const head = h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.class, scope: 'col' }, c.title))));
  const body = h(
    'tbody',
    {},
    rows.length
      ? rows.map((r) => h('tr', row(r), columns.map((c) => h('td', { class: c.class }, c.cell(r)))))
      : h('tr', { class: 'empty' }, h('td', { colspan: columns.length }, empty)),
  );
  return h('table', { 'data-testid': testid }, head, body);
}

export function badge(state, testid = undefined, extra = {}) {
  const value = state == null ? '—' : String(state);
  const css = `badge state-${value.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('span', { class: css, 'data-testid': testid, 'data-state': value, ...extra }, value);
}

export function uid(value, short = false) {
  if (!value) return '—';
  const shown = short && value.length > 24 ? `…${value.slice(-22)}` : value;
  return h('span', { class: 'uid', title: value }, shown);
}

export function link(href, ...children) {
  return h('a', { href }, ...children);
}

export function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', {}, title), ...children);
}

export function button(label, onclick, props = {}) {
  return h('button', { type: 'button', onclick, ...props }, label);
}

/** A button that only an admin may press; for a viewer it stays visible, disabled, with why. */
export function adminButton(label, onclick, props = {}, whyNot = null) {
  const reason = !isAdmin() ? ADMIN_ONLY : whyNot;
  return button(label, onclick, { ...props, disabled: Boolean(reason), title: reason || props.title });
}

/** Runs an action while its button shows it is busy; the error line gets any failure. */
export async function pressing(target, action) {
  const wasDisabled = target.disabled;
  target.disabled = true;
  target.classList.add('busy');
  try {
    return await action();
  } catch (error) {
    if (!(error instanceof ApiError)) showError(String(error));
    return undefined;
  } finally {
    target.classList.remove('busy');
    target.disabled = wasDisabled;
  }
}

export function notice(text, kind = 'ok', testid = 'notice') {
  return h('p', { class: `notice notice-${kind}`, 'data-testid': testid, role: 'status' }, text);
}

// -- formatting ------------------------------------------------------------------------------
const pad = (n) => String(n).padStart(2, '0');

export function clock(at) {
  const d = new Date(at * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function when(at) {
  if (at === null || at === undefined) return '—';
  const d = new Date(at * 1000);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, `${day} ${clock(at)}`);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  if (seconds < 0.001) return '0 s';
  if (seconds < 10) return `${seconds.toFixed(seconds < 1 ? 3 : 2)} s`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 120) return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function bytes(count) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = count || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

/** Anything as one line of text (check errors and warnings may be strings or objects). */
export function text(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value.message) {
    const where = [value.line, value.column].filter((x) => x !== undefined && x !== null).join(':');
    return where ? `${where}: ${value.message}` : String(value.message);
  }
  return JSON.stringify(value);
}

export const JOB_STATES = ['QUEUED', 'RUNNING', 'AWAITING_VENDOR', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
