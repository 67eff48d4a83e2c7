// Routes: routes.yaml in an editor, checked by the node as `ainode routes check` would, saved
// by an admin (only over the version loaded), and the Explain box for one study.

import { ApiError, api, isAdmin, text } from './api.js';
import { adminButton, button, enc, h, heading, notice, pressing, section } from './ui.js';

function checkResult(check, saved = null) {
  const errors = check.errors || [];
  const warnings = check.warnings || [];
  const verdict = [
    errors.length ? `${errors.length} error(s)` : 'No errors',
    warnings.length ? `, ${warnings.length} warning(s)` : '',
    saved ? ` — ${saved}` : '',
  ];
  const list = (items, css, testid) =>
    items.length ? h('ul', { class: css }, items.map((item) => h('li', { 'data-testid': testid }, text(item)))) : null;
  return h(
    'div',
    {
      class: `check ${errors.length ? 'check-bad' : 'check-ok'}`,
      'data-testid': 'routes-check-result',
      'data-ok': String(!errors.length),
    },
    h('p', { class: 'verdict' }, verdict),
    list(errors, 'errors', 'routes-error'),
    list(warnings, 'warnings', 'routes-warning'),
  );
}

/** The check's errors from a refused save: FastAPI's detail, a text of one error a line. */
function refusedErrors(error) {
  const detail = error.body && error.body.detail;
  if (typeof detail === 'string') return detail.split('\n').filter(Boolean);
  if (Array.isArray(detail)) return detail;
  if (detail && Array.isArray(detail.errors)) return detail.errors;
  return [error.message];
}

function explainBox(initial) {
  const input = h('input', {
    'data-testid': 'explain-uid',
    placeholder: 'Study Instance UID',
    'aria-label': 'Study Instance UID',
    value: initial,
  });
  const out = h('pre', { class: 'explain', 'data-testid': 'explain-text', hidden: true });
  const explain = async () => {
    const studyUid = input.value.trim();
    if (!studyUid) return;
    out.hidden = true;
    const answer = await api('GET', `/api/routes/explain/${enc(studyUid)}`);
    out.textContent = answer.text;
    out.hidden = false;
  };
  const form = h(
    'form',
    {
      class: 'explain-form',
      onsubmit: (event) => {
        event.preventDefault();
        pressing(event.target.querySelector('button'), explain);
      },
    },
    input,
    h('button', { type: 'submit', 'data-testid': 'explain-run' }, 'Explain'),
  );
  if (initial) explain().catch(() => {});
  const hint = 'Why each route matched a study or not, as `ainode routes explain` prints it.';
  return section('Explain a study', h('p', { class: 'hint' }, hint), form, out);
}

export function routesPage(view) {
  const path = h('span', { class: 'sub', 'data-testid': 'routes-path' });
  const area = h('textarea', {
    'data-testid': 'routes-text',
    spellcheck: 'false',
    rows: 24,
    'aria-label': 'routes.yaml',
    autocomplete: 'off',
    title: isAdmin() ? null : 'a viewer may check a change but not save it',
  });
  const result = h('div', { 'data-testid': 'routes-result' });
  const dirty = h('span', { class: 'dirty', 'data-testid': 'routes-dirty', hidden: true }, 'unsaved changes');
  let digest = null; // of the text loaded: a save over a file changed since is refused (409)
  let loaded = '';

  const load = async () => {
    const routes = await api('GET', '/api/routes');
    area.value = routes.text;
    loaded = routes.text;
    digest = routes.digest;
    path.textContent = ` ${routes.path}`;
    dirty.hidden = true;
    result.replaceChildren(checkResult(routes.check || {}, 'as on disk'));
  };
  area.addEventListener('input', () => {
    dirty.hidden = area.value === loaded;
  });
  const reloadButton = (testid) =>
    button('Reload from disk', () => load().catch(() => {}), { class: 'secondary', 'data-testid': testid });

  const check = (event) =>
    pressing(event.target, async () => {
      result.replaceChildren(checkResult(await api('POST', '/api/routes/check', { text: area.value })));
    });
  const save = (event) =>
    pressing(event.target, async () => {
      try {
        const answer = await api('PUT', '/api/routes', { text: area.value, expected_digest: digest });
        digest = answer.digest;
        loaded = area.value;
        dirty.hidden = true;
        const saved = `Saved and reloaded (digest ${String(answer.digest).slice(0, 12)}).`;
        result.replaceChildren(notice(saved, 'ok', 'routes-saved'));
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (error.status === 422) {
          result.replaceChildren(checkResult({ errors: refusedErrors(error) }, 'not saved'));
        } else if (error.status === 409) {
          const why = 'Not saved: routes.yaml changed on disk since it was loaded. Reload it, then make your change again.';
          result.replaceChildren(notice(why, 'error', 'routes-conflict'), reloadButton('routes-conflict-reload'));
        }
      }
    });

  const toolbar = h(
    'div',
    { class: 'toolbar' },
    button('Check', check, { 'data-testid': 'routes-check' }),
    adminButton('Save', save, { 'data-testid': 'routes-save' }),
    reloadButton('routes-reload'),
    dirty,
  );
  view.main.append(
    heading('Routes', path),
    h(
      'div',
      { class: 'routes-layout' },
      h('section', { class: 'panel editor' }, toolbar, area, result),
      explainBox(view.query.get('explain') || ''),
    ),
  );
  load().catch(() => {});
}
