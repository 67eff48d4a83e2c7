// Calls to the node's REST API (docs/console-api.md): the login this page holds, the
// X-CSRF-Token header on every change, and the one visible error line a failed call fills.

/** Me {user, role, csrf_token, show_patient_names} from POST /api/login or GET /api/me. */
export const session = { me: null };

export const isAdmin = () => Boolean(session.me && session.me.role === 'admin');

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status; // 0: no answer at all
    this.body = body;
  }
}

let unauthorized = () => {};

/** What to do when the node answers 401 (the login expired, the node restarted). */
export function onUnauthorized(callback) {
  unauthorized = callback;
}

// -- the error line ---------------------------------------------------------------------------
let errorKey = null;

/** Shows the message on the error line; ``key`` lets a later success of the same call clear it. */
export function showError(message, key = null) {
  const line = document.getElementById('error');
  const now = new Date().toTimeString().slice(0, 8);
  line.querySelector('.error-text').textContent = `${now}  ${message}`;
  line.hidden = false;
  errorKey = key;
}

/** Hides the error line: any error, or only the one a call with this ``key`` put there. */
export function clearError(key = undefined) {
  if (key !== undefined && key !== errorKey) return;
  document.getElementById('error').hidden = true;
  errorKey = null;
}

/** One problem (a string, or an object with a message and where) as one line. */
export function text(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value.msg) return `${(value.loc || []).join('.')}: ${value.msg}`;
  if (typeof value === 'object' && value.message) return String(value.message);
  return JSON.stringify(value);
}

/** FastAPI's ``detail``: a string, a list of validation errors, or an object. */
function describeDetail(body) {
  if (body === null || body === undefined) return '';
  if (typeof body === 'string') return body.trim().slice(0, 500);
  const detail = body.detail !== undefined ? body.detail : body;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) return detail.map(text).join('; ');
  if (detail && Array.isArray(detail.errors)) return detail.errors.map(text).join('; ');
  return text(detail);
}

async function answerOf(response) {
  const raw = response.status === 204 ? '' : await response.text();
  if (!raw) return null;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** One API call; its JSON answer. A failure throws ApiError, already on the error line
 * unless ``quiet``. */
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
  const data = await answerOf(response);
  if (!response.ok) {
    const why = `${response.status} ${response.statusText} ${describeDetail(data)}`.trim();
    const failure = new ApiError(response.status, `${key} failed: ${why}`, data);
    if (response.status === 401 && path !== '/api/login' && path !== '/api/me') unauthorized();
    if (!quiet) showError(failure.message, key);
    throw failure;
  }
  clearError(key);
  return data;
}
