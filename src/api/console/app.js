// The bdjobs console: plain JavaScript, no build step, no dependency. Everything goes through
// the public API (/api/v1) with the key the person typed, kept in sessionStorage (this tab
// only). Values from jobs are only ever put in the page as text (textContent, text nodes,
// attributes of elements the script creates): the page is served with a CSP that allows no
// inline script either, so a name like <img onerror=...> stays a name.
'use strict';

const KEY = 'bdjobs.api_key';
const PAGE_SIZE = 20;
const TERMINAL = ['completed', 'failed', 'cancelled'];
const CAPABILITIES = ['qualification', 'company_size', 'contact_discovery', 'email_lookup',
  'email_verify', 'linkedin_enrich', 'deliverable_finalize'];
const CONTACT_COLUMNS = ['first_name', 'last_name', 'full_name', 'email'];

const $ = (id) => document.getElementById(id);

// ---- small helpers -------------------------------------------------------------------------

/** An element with attributes and children (strings become text nodes, never markup). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function clear(node) { node.replaceChildren(); }

function absolute(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function relative(iso, now = Date.now()) {
  if (!iso) return '';
  const secs = Math.round((new Date(iso).getTime() - now) / 1000);
  const fmt = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const abs = Math.abs(secs);
  if (abs < 60) return fmt.format(secs, 'second');
  if (abs < 3600) return fmt.format(Math.round(secs / 60), 'minute');
  if (abs < 86400) return fmt.format(Math.round(secs / 3600), 'hour');
  return fmt.format(Math.round(secs / 86400), 'day');
}

/** A <time> showing "3 minutes ago" with the absolute time as its title; refreshed by tick(). */
function timeEl(iso) {
  if (!iso) return el('span', { class: 'hint', text: '—' });
  return el('time', { datetime: iso, title: absolute(iso), 'data-relative': '1', text: relative(iso) });
}

function tickTimes() {
  for (const t of document.querySelectorAll('time[data-relative]')) {
    t.textContent = relative(t.getAttribute('datetime'));
  }
}

function badge(status) {
  return el('span', { class: 'badge s-' + status, text: status });
}

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail, problems) {
    super(detail);
    this.status = status;
    this.problems = problems || [];
  }
}

function apiKey() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set('Authorization', 'Bearer ' + apiKey());
  const resp = await fetch('/api/v1' + path, { ...options, headers });
  if (resp.status === 401 && path !== '/bd/jobs?limit=1') {
    signOut('Your key was refused (revoked or unknown). Sign in again.');
    throw new ApiError(401, 'signed out');
  }
  return resp;
}

async function apiJson(path, options) {
  const resp = await api(path, options);
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const detail = body && typeof body.detail === 'string' ? body.detail : resp.statusText;
    throw new ApiError(resp.status, detail, body && Array.isArray(body.problems) ? body.problems : null);
  }
  return body;
}

function errorText(e) {
  if (e instanceof ApiError) return e.message;
  return 'The API cannot be reached (' + (e && e.message ? e.message : 'network error') + ').';
}

// ---- views and routing ---------------------------------------------------------------------

let leave = []; // what to stop when the view changes (timers, streams)

function stopView() {
  for (const f of leave) { try { f(); } catch (_) { /* already stopped */ } }
  leave = [];
}

function show(name) {
  for (const v of ['signin', 'jobs', 'new', 'job']) $('view-' + v).hidden = v !== name;
  $('nav').hidden = name === 'signin';
  $('nav-jobs').toggleAttribute('aria-current', name === 'jobs');
  if (name === 'jobs') $('nav-jobs').setAttribute('aria-current', 'page');
  $('nav-new').toggleAttribute('aria-current', name === 'new');
  if (name === 'new') $('nav-new').setAttribute('aria-current', 'page');
}

function route() {
  stopView();
  if (!apiKey()) { show('signin'); document.title = 'Sign in · bdjobs'; $('key').focus(); return; }
  const hash = location.hash || '#/jobs';
  const job = hash.match(/^#\/jobs\/([0-9A-Za-z-]{1,64})$/);
  if (job) { showJob(job[1]); return; }
  if (hash === '#/new') { showNew(); return; }
  showJobs(new URLSearchParams(hash.split('?')[1] || ''));
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $('signin-error').textContent = message || '';
  route();
}

async function signIn(event) {
  event.preventDefault();
  const key = $('key').value.trim();
  $('signin-error').textContent = '';
  if (!key) { $('signin-error').textContent = 'Enter an API key.'; return; }
  sessionStorage.setItem(KEY, key);
  try {
    const resp = await api('/bd/jobs?limit=1');
    if (resp.status === 401) throw new ApiError(401, 'This key is not valid (unknown or revoked).');
    if (!resp.ok) throw new ApiError(resp.status, 'The API answered ' + resp.status + '.');
    $('key').value = '';
    route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $('signin-error').textContent = errorText(e);
  }
}

// ---- jobs list -----------------------------------------------------------------------------

const list = { cursors: [null], page: 0 };

function listQuery(params) {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const status = params.get('status');
  const search = params.get('q');
  if (status) q.set('status', status);
  if (search) q.set('q', search);
  const cursor = list.cursors[list.page];
  if (cursor) q.set('cursor', cursor);
  return q.toString();
}

function showJobs(params) {
  show('jobs');
  document.title = 'Jobs · bdjobs';
  $('status').value = params.get('status') || '';
  $('q').value = params.get('q') || '';
  const key = params.toString();
  if (list.key !== key) { list.key = key; list.cursors = [null]; list.page = 0; }
  let timer = null;
  let stopped = false;
  const load = async () => {
    try {
      const body = await apiJson('/bd/jobs?' + listQuery(params));
      if (stopped) return;
      $('jobs-error').textContent = '';
      renderJobs(body.jobs);
      list.cursors[list.page + 1] = body.next_cursor;
      $('next').disabled = !body.next_cursor;
      $('prev').disabled = list.page === 0;
      $('page-label').textContent = 'Page ' + (list.page + 1);
      // Live updates: while a job on the page runs, read the page again every 2 s.
      const live = body.jobs.some((j) => !TERMINAL.includes(j.status));
      timer = setTimeout(load, live ? 2000 : 15000);
    } catch (e) {
      if (stopped) return;
      $('jobs-error').textContent = errorText(e);
      if (!(e instanceof ApiError) || e.status >= 500) timer = setTimeout(load, 5000);
    }
  };
  leave.push(() => { stopped = true; clearTimeout(timer); });
  const ticker = setInterval(tickTimes, 10000);
  leave.push(() => clearInterval(ticker));
  load();
}

function renderJobs(jobs) {
  const body = $('jobs');
  clear(body);
  $('jobs-empty').hidden = jobs.length > 0;
  for (const j of jobs) {
    const what = j.preset || (j.requested_capabilities || []).join(', ');
    const progress = el('progress', { max: 100, value: j.progress_percent, 'aria-label': 'progress of job ' + j.job_id });
    body.append(el('tr', { 'data-job': j.job_id },
      el('td', {}, el('a', { href: '#/jobs/' + j.job_id, class: 'mono', title: j.job_id, 'aria-label': 'job ' + j.job_id, text: '…' + j.job_id.slice(-12) })),
      el('td', {}, badge(j.status)),
      el('td', {}, progress, ' ', el('span', { text: j.progress_percent + '%' })),
      el('td', { text: what }),
      el('td', {}, timeEl(j.created_at)),
      el('td', {}, timeEl(j.updated_at)),
    ));
  }
}

function search(event) {
  event.preventDefault();
  const p = new URLSearchParams();
  if ($('status').value) p.set('status', $('status').value);
  if ($('q').value.trim()) p.set('q', $('q').value.trim());
  const hash = '#/jobs' + (p.toString() ? '?' + p.toString() : '');
  if (location.hash === hash) route(); else location.hash = hash;
}

function page(delta) {
  const next = list.page + delta;
  if (next < 0 || (delta > 0 && !list.cursors[next])) return;
  list.page = next;
  route();
}

// ---- new job -------------------------------------------------------------------------------

const upload = { file: null, text: '', check: 0, valid: false };

/** RFC 4180 CSV: quoted fields with doubled quotes and newlines. Returns rows with the line
 * each starts on; for the preview only (the API parses the file itself). */
function parseCsv(text, maxRows) {
  const rows = [];
  let row = [], field = '', quoted = false, line = 1, start = 1;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') { if (text[i + 1] === '"') { field += '"'; i++; } else quoted = false; }
      else { if (c === '\n') line++; field += c; }
    } else if (c === '"') quoted = true;
    else if (c === ',') { row.push(field); field = ''; }
    else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field); field = '';
      if (row.length > 1 || row[0] !== '') rows.push({ line: start, cells: row });
      row = []; line++; start = line;
      if (rows.length > maxRows) return rows;
    } else field += c;
  }
  if (field !== '' || row.length) { row.push(field); rows.push({ line: start, cells: row }); }
  return rows;
}

function preview(text, name) {
  const jsonl = /\.(jsonl|ndjson)$/i.test(name) || (!/\.csv$/i.test(name) && text.trimStart().startsWith('{'));
  let header = [], rows = [];
  if (jsonl) {
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length && rows.length < 5; i++) {
      if (!lines[i].trim()) continue;
      let obj;
      try { obj = JSON.parse(lines[i]); } catch (_) { obj = null; }
      if (!obj || typeof obj !== 'object' || Array.isArray(obj)) { rows.push({ line: i + 1, cells: null }); continue; }
      for (const k of Object.keys(obj)) if (!header.includes(k)) header.push(k);
      rows.push({ line: i + 1, obj });
    }
    rows = rows.map((r) => ({ line: r.line, cells: r.obj ? header.map((h) => (r.obj[h] === undefined || r.obj[h] === null ? '' : String(r.obj[h]))) : null }));
  } else {
    const parsed = parseCsv(text.replace(/^\uFEFF/, ''), 6);
    header = (parsed[0] && parsed[0].cells.map((h) => h.trim())) || [];
    rows = parsed.slice(1, 6);
  }
  return { header, rows };
}

function renderPreview({ header, rows }) {
  const table = $('preview');
  clear(table);
  table.append(el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'line' }),
    ...header.map((h) => el('th', { scope: 'col', text: h })))));
  const body = el('tbody');
  for (const r of rows) {
    body.append(el('tr', {}, el('td', { text: String(r.line) }),
      ...(r.cells ? r.cells.map((c) => el('td', { text: c })) : [el('td', { colspan: header.length || 1, class: 'error', text: 'not a JSON object' })])));
  }
  table.append(body);
  $('preview-box').hidden = false;
}

function guessKind(header) {
  if (header.some((h) => CONTACT_COLUMNS.includes(h))) return 'contacts';
  return header.includes('domain') ? 'companies' : 'contacts';
}

function csvList(id) {
  return $(id).value.split(',').map((s) => s.trim()).filter(Boolean);
}

/** The job part: everything but the records. */
function jobPart() {
  const job = {};
  if ($('mode-preset').checked) job.preset = $('preset').value;
  else job.requested_capabilities = CAPABILITIES.filter((c) => $('cap-' + c).checked);
  const icp = { icp_gate: $('icp-apply').checked ? 'apply' : 'skip' };
  for (const [k, id] of [['industries', 'icp-industries'], ['countries', 'icp-countries'], ['keywords', 'icp-keywords']]) {
    const v = csvList(id);
    if (v.length) icp[k] = v;
  }
  for (const [k, id] of [['min_employees', 'icp-min'], ['max_employees', 'icp-max']]) {
    if ($(id).value !== '') icp[k] = Number($(id).value);
  }
  job.icp_config = icp;
  const chat = $('chat-id').value.trim();
  if (chat) job.chat_id = chat;
  return job;
}

function form() {
  const data = new FormData();
  data.append('job', new Blob([JSON.stringify(jobPart())], { type: 'application/json' }), 'job.json');
  const kind = $('kind').value === 'auto' ? guessKind(preview(upload.text, upload.file.name).header) : $('kind').value;
  data.append(kind, upload.file, upload.file.name);
  return { data, kind };
}

function showProblems(problems, detail) {
  const ul = $('problems');
  clear(ul);
  for (const p of problems.length ? problems : [detail]) ul.append(el('li', { text: p }));
}

/** Asks the API to check the file and options (`?dry_run=true`): the same rules as a real
 * submission, so what passes here is accepted. */
async function check() {
  const n = ++upload.check;
  upload.valid = false;
  $('submit').disabled = true;
  clear($('problems'));
  $('new-error').textContent = '';
  if (!upload.file) { $('check').textContent = ''; return; }
  $('check').textContent = 'Checking the file…';
  try {
    const { data, kind } = form();
    const body = await apiJson('/bd/jobs?dry_run=true', { method: 'POST', body: data });
    if (n !== upload.check) return;
    upload.valid = true;
    $('submit').disabled = false;
    const count = kind === 'contacts' ? body.contacts : body.companies;
    clear($('check'));
    $('check').append(el('p', { class: 'ok', text: 'Ready: ' + count + ' ' + kind + ', plan ' + body.requested_capabilities.join(' → ') + '.' }));
    for (const w of body.warnings) $('check').append(el('p', { class: 'hint', text: 'Warning: ' + w }));
  } catch (e) {
    if (n !== upload.check) return;
    $('check').textContent = e instanceof ApiError && e.status === 422 ? 'The file or the options need fixing:' : '';
    if (e instanceof ApiError && e.status === 422) showProblems(e.problems, e.message);
    else $('new-error').textContent = errorText(e);
  }
}

async function takeFile(file) {
  if (!file) return;
  upload.file = file;
  $('file-name').textContent = file.name + ' (' + file.size + ' bytes)';
  try {
    upload.text = await file.text();
  } catch (e) {
    $('new-error').textContent = 'Cannot read the file: ' + e.message;
    return;
  }
  renderPreview(preview(upload.text, file.name));
  check();
}

function showNew() {
  show('new');
  document.title = 'New job · bdjobs';
}

async function submitJob(event) {
  event.preventDefault();
  if (!upload.valid) return;
  $('submit').disabled = true;
  $('new-error').textContent = '';
  try {
    const { data } = form();
    const body = await apiJson('/bd/jobs', { method: 'POST', body: data });
    upload.file = null; upload.text = ''; upload.valid = false;
    $('file').value = ''; $('file-name').textContent = ''; $('preview-box').hidden = true; $('check').textContent = '';
    location.hash = '#/jobs/' + body.job_id;
  } catch (e) {
    if (e instanceof ApiError && e.status === 422) showProblems(e.problems, e.message);
    else $('new-error').textContent = errorText(e);
    $('submit').disabled = false;
  }
}

function setupNew() {
  const caps = $('caps');
  for (const c of CAPABILITIES) {
    caps.append(el('span', {}, el('input', { type: 'checkbox', id: 'cap-' + c, value: c, checked: c === 'email_verify' }),
      el('label', { for: 'cap-' + c, text: c })));
  }
  const mode = () => {
    $('preset-box').hidden = !$('mode-preset').checked;
    $('caps-box').hidden = $('mode-preset').checked;
    check();
  };
  $('mode-preset').addEventListener('change', mode);
  $('mode-caps').addEventListener('change', mode);
  $('file').addEventListener('change', () => takeFile($('file').files[0]));
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    takeFile(e.dataTransfer.files[0]);
  });
  let debounce = null;
  $('new-form').addEventListener('change', (e) => {
    if (e.target.id === 'file' || e.target.name === 'mode') return;
    clearTimeout(debounce);
    debounce = setTimeout(check, 300);
  });
  $('new-form').addEventListener('submit', submitJob);
}

// ---- one job -------------------------------------------------------------------------------

const STATUSES = [['verified', 'verified_emails'], ['risky', 'risky_emails'], ['invalid', 'invalid_emails'],
  ['unknown', 'unknown_emails'], ['unverified', 'unverified_emails']];

function renderJob(j) {
  $('job-status').className = 'badge s-' + j.status;
  $('job-status').textContent = j.status;
  $('job-progress').value = j.progress_percent;
  $('job-progress').setAttribute('aria-valuetext', j.progress_percent + '%');
  $('job-message').textContent = j.progress_percent + '% · ' + (j.progress_message || '');
  $('job-error').hidden = !j.error_message;
  $('job-error').textContent = j.error_message ? 'Failed: ' + j.error_message : '';
  $('cancel').hidden = TERMINAL.includes(j.status);
  const dl = $('job-details');
  clear(dl);
  const row = (name, value) => dl.append(el('dt', { text: name }), el('dd', {}, value));
  row('Job id', el('code', { text: j.job_id }));
  row(j.preset ? 'Preset' : 'Capabilities', j.preset || j.requested_capabilities.join(', '));
  row('Plan', (j.requested_capabilities || []).join(' → '));
  row('Created', timeEl(j.created_at));
  row('Started', timeEl(j.started_at));
  row('Finished', timeEl(j.completed_at));
  row('Updated', timeEl(j.updated_at));
  for (const t of dl.querySelectorAll('time')) t.after(' (' + t.title + ')');
  renderWarnings(j.warnings || []);
}

function renderWarnings(warnings) {
  const ul = $('job-warnings');
  clear(ul);
  if (!warnings.length) ul.append(el('li', { class: 'hint', text: 'None.' }));
  for (const w of warnings) ul.append(el('li', { text: w }));
}

function renderResult(r) {
  const dl = $('job-summary');
  clear(dl);
  const s = r.summary || {};
  for (const [name, key] of [['Delivered contacts', 'delivered_contacts'], ['Verified emails', 'verified_emails'],
    ['Companies processed', 'companies_processed'], ['Companies disqualified', 'companies_disqualified'],
    ['Contacts discovered', 'contacts_discovered']]) {
    if (s[key] === undefined) continue;
    dl.append(el('dt', { text: name }), el('dd', { 'data-key': key, text: String(s[key]) }));
  }
  const counts = STATUSES.map(([label, key]) => [label, Number(s[key] || 0)]);
  const total = counts.reduce((a, [, n]) => a + n, 0);
  $('chart-box').hidden = total === 0;
  const chart = $('chart');
  clear(chart);
  chart.append(svg('desc', { id: 'chart-desc' }, counts.map(([l, n]) => l + ' ' + n).join(', ')));
  const max = Math.max(1, ...counts.map(([, n]) => n));
  counts.forEach(([label, n], i) => {
    const y = 4 + i * 25;
    chart.append(svg('text', { x: 0, y: y + 13 }, label));
    chart.append(svg('rect', { x: 78, y, height: 18, width: Math.max(n ? 2 : 0, (n / max) * 200), class: 'bar-' + label }));
    chart.append(svg('text', { x: 84 + (n / max) * 200, y: y + 13 }, String(n)));
  });
  const assets = $('assets');
  clear(assets);
  for (const a of r.result_assets || []) {
    const kind = a.mime_type && a.mime_type.startsWith('text/csv') ? 'CSV' : a.mime_type === 'application/json' ? 'JSON' : a.mime_type;
    const button = el('button', { type: 'button', class: 'secondary', 'data-asset': a.asset_id,
      text: 'Download ' + kind + (a.availability === 'partial' ? ' (partial)' : '') });
    button.addEventListener('click', () => download(a, button));
    assets.append(button);
  }
}

/** Downloads an asset with the key (a plain link cannot send it): fetched as a blob, then
 * saved through a temporary link. */
async function download(asset, button) {
  button.disabled = true;
  $('cancel-error').textContent = '';
  try {
    const resp = await api(asset.download_url.replace(/^\/api\/v1/, ''));
    if (!resp.ok) throw new ApiError(resp.status, 'The download failed (' + resp.status + ').');
    const blob = await resp.blob();
    const disposition = resp.headers.get('content-disposition') || '';
    const m = disposition.match(/filename="([^"]+)"/);
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: m ? m[1] : asset.asset_id });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    $('cancel-error').textContent = errorText(e);
  } finally {
    button.disabled = false;
  }
}

/** Server-Sent Events over fetch (EventSource cannot send the Authorization header). Calls
 * onEvent(name, data) for each event; resolves when the stream ends. */
async function readEvents(path, signal, onEvent) {
  const resp = await api(path, { signal, headers: { Accept: 'text/event-stream' } });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, detail);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '', name = null, data = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (data !== null) onEvent(name || 'message', data);
        name = null; data = null;
      } else if (!line.startsWith(':')) {
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') name = v;
        else if (field === 'data') data = data === null ? v : data + '\n' + v;
      }
    }
  }
}

function showJob(id) {
  show('job');
  document.title = 'Job …' + id.slice(-12) + ' · bdjobs';
  $('job-id').textContent = id;
  $('job-missing').hidden = true;
  $('job-body').hidden = false;
  clear($('job-summary')); clear($('assets')); clear($('job-details')); clear($('job-warnings'));
  $('chart-box').hidden = true;
  $('cancel-error').textContent = '';
  $('job-live').textContent = '';
  const control = new AbortController();
  let stopped = false;
  leave.push(() => { stopped = true; control.abort(); });
  const ticker = setInterval(tickTimes, 10000);
  leave.push(() => clearInterval(ticker));

  const loadResult = async () => {
    try { renderResult(await apiJson('/bd/jobs/' + id + '/result')); } catch (e) {
      if (!stopped) $('cancel-error').textContent = errorText(e);
    }
  };
  const missing = () => {
    $('job-body').hidden = true;
    $('job-missing').hidden = false;
    $('job-missing').textContent = 'Job not found: no job of yours has this id.';
    document.title = 'Job not found · bdjobs';
  };
  $('cancel').onclick = async () => {
    $('cancel').disabled = true;
    $('cancel-error').textContent = '';
    try {
      renderJob(await apiJson('/bd/jobs/' + id + '/cancel', { method: 'POST' }));
      $('job-live').textContent = 'Cancellation requested: the job stops at its next stage.';
    } catch (e) {
      $('cancel-error').textContent = errorText(e);
    } finally {
      $('cancel').disabled = false;
    }
  };

  (async () => {
    let failures = 0;
    while (!stopped) {
      let ended = false;
      try {
        $('job-live').textContent = failures ? 'Reconnecting…' : 'Live';
        // `progress` carries the whole job, warnings included, on connect and on each change:
        // the `warning` events repeat them one by one, for clients that print a log.
        await readEvents('/bd/jobs/' + id + '/events', control.signal, (name, data) => {
          let body = null;
          try { body = JSON.parse(data); } catch (_) { return; }
          failures = 0;
          $('job-live').textContent = TERMINAL.includes(body.status) ? '' : 'Live';
          if (name === 'progress') renderJob(body);
          else if (TERMINAL.includes(name)) { ended = true; renderJob(body); }
        });
      } catch (e) {
        if (stopped) return;
        if (e instanceof ApiError && e.status === 404) { missing(); return; }
        if (e instanceof ApiError && e.status === 401) return;
        failures++;
      }
      if (stopped) return;
      if (ended) {
        $('job-live').textContent = '';
        await loadResult();
        return;
      }
      // The stream ended without a terminal event (server restart, stream age limit): back
      // off a little and reconnect, as `bdjobs watch` does.
      failures++;
      $('job-live').textContent = 'Reconnecting…';
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(failures, 5))));
    }
  })().catch((e) => { if (!stopped) $('cancel-error').textContent = errorText(e); });
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', (e) => { signIn(e).catch(() => {}); });
  $('signout').addEventListener('click', () => signOut(''));
  $('filters').addEventListener('submit', search);
  $('prev').addEventListener('click', () => page(-1));
  $('next').addEventListener('click', () => page(1));
  setupNew();
  window.addEventListener('hashchange', route);
  window.addEventListener('unhandledrejection', (e) => {
    // Aborted streams on navigation are expected; anything else is a bug worth seeing.
    if (e.reason && e.reason.name === 'AbortError') e.preventDefault();
  });
  route();
});
