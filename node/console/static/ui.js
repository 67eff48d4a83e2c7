// Building the pages: elements without innerHTML (every value from the API goes in as text,
// so nothing in a DICOM header can become markup), tables, badges, buttons, times.

import { ApiError, clearError, isAdmin, showError } from './api.js';

export const JOB_STATES = ['QUEUED', 'RUNNING', 'AWAITING_VENDOR', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const ADMIN_ONLY = 'needs the admin role (you are logged in as a viewer)';
export const enc = encodeURIComponent;

/** h('td', {class: 'uid', 'data-testid': 'x', onclick: f}, child, 'text', [more]);
 * null, undefined and false children and attributes are left out. */
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

/** columns: [{title, cell(row) -> Node|string, class?}]; row(row) -> the row's attributes. */
export function table(columns, rows, { row = () => ({}), empty = 'nothing yet', testid } = {}) {
  const titles = columns.map((c) => h('th', { class: c.class, scope: 'col' }, c.title));
  const body = rows.length
    ? rows.map((r) => h('tr', row(r), columns.map((c) => h('td', { class: c.class }, c.cell(r)))))
    : h('tr', { class: 'empty' }, h('td', { colspan: columns.length }, empty));
  return h('table', { 'data-testid': testid }, h('thead', {}, h('tr', {}, titles)), h('tbody', {}, body));
}

/** A state as a coloured label; ``data-state`` keeps the API's value. */
export function badge(state, testid = undefined, extra = {}) {
  const value = state === null || state === undefined ? '—' : String(state);
  const css = `badge state-${value.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  // a line may break after an underscore (AWAITING_VENDOR in a narrow box); the text stays
  const parts = value
    .split('_')
    .flatMap((part, i, all) => (i < all.length - 1 ? [`${part}_`, h('wbr')] : [part]));
  return h('span', { class: css, 'data-testid': testid, 'data-state': value, ...extra }, parts);
}

/** A UID in full, or (``short``) its last digits with the whole UID as the tooltip. */
export function uid(value, short = false) {
  if (!value) return '—';
  if (short && value.length > 18) {
    return h('span', { class: 'uid short', title: value }, `…${value.slice(-16)}`);
  }
  return h('span', { class: 'uid', title: value }, value);
}

export const link = (href, ...children) => h('a', { href }, ...children);

export const section = (title, ...children) =>
  h('section', { class: 'panel' }, h('h2', {}, title), ...children);

export const button = (label, onclick, props = {}) =>
  h('button', { type: 'button', onclick, ...props }, label);

/** A button only an admin may press: a viewer sees it disabled, with why as its tooltip;
 * ``whyNot`` disables it for everyone (the job is not in a state that allows it). */
export function adminButton(label, onclick, props = {}, whyNot = null) {
  const reason = isAdmin() ? whyNot : ADMIN_ONLY;
  return button(label, onclick, { ...props, disabled: Boolean(reason), title: reason || props.title });
}

/** Runs a user's action while its button shows it is busy; a failure is on the error line. */
export async function pressing(target, action) {
  clearError(); // what the user does now replaces the last complaint
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

export const notice = (message, kind = 'ok', testid = 'notice') =>
  h('p', { class: `notice notice-${kind}`, 'data-testid': testid, role: 'status' }, message);

// -- shared by the pages ----------------------------------------------------------------------
/** render(data) only when the answer changed: a poll does not rebuild what is unchanged (nor
 * take away a click, a focus or a selection). */
export function changes(render) {
  let last = null;
  return (data, force = false) => {
    const now = JSON.stringify(data);
    if (!force && now === last) return;
    last = now;
    render(data);
  };
}

export const heading = (title, ...extra) =>
  h('div', { class: 'page-head' }, h('h1', {}, title), ...extra);

/** "updated 12:04:31": the page is live; ``touch()`` after each answer. */
export function updated() {
  const stamp = h('span', { class: 'updated', 'data-testid': 'updated-at' }, '');
  stamp.touch = () => {
    stamp.textContent = `updated ${clock(Date.now() / 1000)}`;
  };
  return stamp;
}

/** A state filter that lives in the address (``#/jobs?state=FAILED``), so it can be shared. */
export function stateFilter(states, current, base, testid) {
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

// -- numbers and times ------------------------------------------------------------------------
const pad = (n) => String(n).padStart(2, '0');

function clock(at) {
  const d = new Date(at * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A time (local); ``compact``: the clock alone for today, else day and minutes (tables). */
export function when(at, compact = false) {
  if (at === null || at === undefined) return '—';
  const d = new Date(at * 1000);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const full = `${day} ${clock(at)}`;
  let shown = full;
  if (compact) {
    const today = new Date().toDateString() === d.toDateString();
    shown = today ? clock(at) : `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  return h('time', { datetime: d.toISOString(), title: full }, shown);
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
