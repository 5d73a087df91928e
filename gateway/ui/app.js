// ClawVM session inspector: plain JavaScript, no build step, nothing from the network but this
// gateway's own JSON (gateway/ui_api.py). Everything a tenant's agent sent is untrusted: it is
// only ever written with textContent, never parsed as HTML.
'use strict';

const KEY_STORE = 'clawvm-inspector-key';
const LEVELS = {
  F: { name: 'full', css: 'lv-F', color: '#0b3d91' },
  C: { name: 'compressed', css: 'lv-C', color: '#2f74c0' },
  S: { name: 'structured', css: 'lv-S', color: '#6aa8e0' },
  P: { name: 'pointer', css: 'lv-P', color: '#b9d6f2' },
  '-': { name: 'absent', css: 'lv-absent', color: '#eceff2' },
  '.': { name: 'not yet in the table', css: 'lv-unborn', color: null },
  '?': { name: 'unknown (before the oldest kept keyframe)', css: 'lv-unknown', color: '#d5d5d5' },
};
const LEVEL_LETTER = { full: 'F', compressed: 'C', structured: 'S', pointer: 'P', none: '-' };
const TYPE_MARK = { bootstrap: 'B', constraint: 'R', plan: 'L', preference: 'F', intent: 'I', evidence: 'E', conversation: 'C' };

class AuthError extends Error {}

// ------------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(n) { return typeof n === 'number' ? n.toLocaleString('en-US') : '–'; }
function pct(part, whole) { return whole ? `${Math.round((100 * part) / whole)}%` : '–'; }
function when(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–'; }
function enc(s) { return encodeURIComponent(s); }
function link(hash, text, cls) { return el('a', { href: hash, class: cls }, text); }
function pageLink(session, pageId) { return link(`#/s/${enc(session)}/p/${enc(pageId)}`, pageId, 'mono'); }

function key() { return sessionStorage.getItem(KEY_STORE) || ''; }

async function api(path) {
  const headers = { Accept: 'application/json' };
  if (key()) headers.Authorization = `Bearer ${key()}`;
  const response = await fetch(path, { headers, credentials: 'same-origin', cache: 'no-store' });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) throw new AuthError((body && body.error && body.error.message) || 'API key refused');
  if (!response.ok) {
    const message = (body && body.error && body.error.message) || `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function show(...nodes) {
  const view = document.getElementById('view');
  view.replaceChildren(...nodes.flat(Infinity).filter((node) => node !== null && node !== undefined && node !== false));
  window.scrollTo(0, 0);
  document.getElementById('login').hidden = true;
  view.hidden = false;
}

function crumbs(...parts) {
  const nav = document.getElementById('crumbs');
  const items = [link('#/', 'sessions')];
  for (const part of parts) items.push(' / ', part);
  nav.replaceChildren(...items);
}

function showLogin(message) {
  document.getElementById('view').hidden = true;
  document.getElementById('view').replaceChildren();
  document.getElementById('crumbs').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  document.getElementById('signout').hidden = !key();
  document.getElementById('key').focus();
}

function card(label, value) { return el('div', { class: 'card' }, el('div', { class: 'v' }, value), el('div', { class: 'k' }, label)); }

function table(headers, rows, opts) {
  const head = el('tr', {}, headers.map((h) => el('th', { class: h.endsWith('#') || (opts && opts.numeric && opts.numeric.includes(h)) ? 'n' : null }, h.replace(/#$/, ''))));
  const body = el('tbody');
  const frag = document.createDocumentFragment();
  for (const row of rows) frag.append(row);
  body.append(frag);
  return el('table', { class: opts && opts.cls }, el('thead', {}, head), body);
}

// A long list shows its newest `SHOWN` rows; a button draws the rest (a 1,000-turn session stays quick).
const SHOWN = 150;
function capped(items, headers, makeRow, cls) {
  const wrap = el('div', {});
  const draw = (all) => {
    const shown = all ? items : items.slice(-SHOWN);
    const offset = items.length - shown.length;
    const parts = [el('div', { class: 'scroll' }, table(headers, shown.map((item, i) => makeRow(item, offset + i)), { cls }))];
    if (!all && offset > 0) {
      parts.unshift(el('div', { class: 'toolbar' }, el('span', { class: 'muted' }, `the newest ${num(shown.length)} of ${num(items.length)}`),
        el('button', { type: 'button', class: 'show-all', onclick: () => draw(true) }, `show all ${num(items.length)}`)));
    }
    wrap.replaceChildren(...parts);
  };
  draw(false);
  return wrap;
}

function td(value, numeric) { return el('td', { class: numeric ? 'n' : null }, value); }

// ------------------------------------------------------------------ views

async function sessionsView() {
  crumbs();
  const listing = await api('/v1/clawvm/sessions?limit=200');
  const rows = listing.data.map((s) => el('tr', {},
    td(link(`#/s/${enc(s.id)}`, s.id, 'mono')),
    td(num(s.turns), true),
    td(num(s.requests), true),
    td(num(s.tokens_received), true),
    td(num(s.tokens_forwarded), true),
    td(pct(s.tokens_forwarded, s.tokens_received), true),
    td(s.faults ? el('span', { class: 'pill bad' }, num(s.faults)) : '0', true),
    td([num(s.lifecycle_events), s.last_event ? el('span', { class: 'pill ev' }, s.last_event) : null], true),
    td(when(s.last_activity_ms)),
  ));
  const body = rows.length
    ? el('div', { class: 'scroll' }, table(['session', 'turns#', 'requests#', 'tokens received#', 'tokens forwarded#', 'forwarded / received#', 'faults#', 'lifecycle events#', 'last activity'], rows, { cls: 'sessions' }))
    : el('p', { class: 'muted empty' }, 'No sessions yet: send a request through the gateway with this key.');
  show(el('h1', {}, 'Sessions'), el('p', { class: 'muted' }, 'Newest first. Tokens are per request, summed over the session.'), body,
    listing.has_more ? el('p', { class: 'muted' }, 'Only the 200 most recently active are listed.') : null);
}

async function sessionView(sessionId) {
  crumbs(el('span', { class: 'mono' }, sessionId));
  const t = await api(`/v1/clawvm/sessions/${enc(sessionId)}/timeline`);
  const turns = t.turns;
  const faults = Object.values(t.tally.faults).reduce((a, b) => a + b, 0);
  const lifecycle = t.events.filter((e) => e.kind === 'lifecycle');
  const summary = el('div', { class: 'cards' },
    card('turns', num(t.turn)),
    card('requests kept', num(turns.length)),
    card('last prompt tokens', num(t.prompt_tokens)),
    card('faults', num(faults)),
    card('recalls', num(t.recalls.length)),
    card('lifecycle events', num(lifecycle.length)),
  );
  const parts = [el('h1', {}, 'Session ', el('span', { class: 'mono' }, t.id)), summary];
  parts.push(el('h2', {}, 'Page fidelity, turn by turn'), heatLegend('pages down (transcript order; no number: no longer in the transcript), requests across; '
    + 'marked columns: lifecycle events; click a cell to open the page'), heatMap(t));
  parts.push(el('h2', {}, 'Tokens forwarded against the budget'), tokenChart(turns));
  parts.push(el('h2', {}, 'Timeline'), timelineTable(t));
  parts.push(el('h2', {}, 'Lifecycle events and faults'), eventsTable(t));
  parts.push(el('h2', {}, 'Recalls'), recallsTable(t));
  parts.push(el('h2', {}, 'Write-back journal'), journalTable(t));
  show(...parts);
}

function heatLegend(note) {
  return el('div', { class: 'legend' },
    Object.entries(LEVELS).map(([, lv]) => el('span', {}, el('i', { class: lv.css }), lv.name)),
    el('span', {}, note));
}

function heatMap(t) {
  const heat = t.heat;
  const cols = heat.columns;
  const rows = heat.rows.length;
  const wrap = el('div', { class: 'heat-wrap', id: 'heatmap' });
  if (!rows || !cols) {
    wrap.append(el('p', { class: 'muted', text: 'No turns recorded yet.' }));
    return wrap;
  }
  const gutter = 120;
  const avail = Math.max(400, (document.getElementById('view').clientWidth || 1100) - gutter - 30);
  const cw = Math.max(1, Math.min(28, Math.floor(avail / cols)));
  const ch = rows > 400 ? 2 : rows > 150 ? 4 : rows > 60 ? 8 : 12;
  const top = 18;
  const canvas = el('canvas', { 'data-rows': rows, 'data-columns': cols });
  const scale = window.devicePixelRatio || 1;
  const width = gutter + cols * cw;
  const height = top + rows * ch;
  canvas.width = Math.ceil(width * scale);
  canvas.height = Math.ceil(height * scale);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const g = canvas.getContext('2d');
  g.scale(scale, scale);
  g.font = '10px ui-monospace, monospace';
  g.textBaseline = 'middle';
  // column marks: lifecycle events
  turnsWithEvents(t).forEach((event, col) => {
    if (!event) return;
    g.fillStyle = '#e8a200';
    g.fillRect(gutter + col * cw, 0, Math.max(cw, 2), top - 4);
    g.fillStyle = '#fff3d6';
    g.fillRect(gutter + col * cw, top, Math.max(cw, 1), rows * ch);
  });
  g.fillStyle = '#5b6570';
  g.fillText('turn →', 4, top / 2);
  const every = Math.max(1, Math.ceil(36 / cw));
  t.turns.forEach((turn, col) => {
    if (col % every === 0) g.fillText(String(turn.turn), gutter + col * cw + 1, top / 2);
  });
  heat.rows.forEach((row, r) => {
    const y = top + r * ch;
    let col = 0;
    for (const [, letter, count] of row.matchAll(/([A-Z.?-])(\d+)/g)) {
      const n = Number(count);
      const lv = LEVELS[letter];
      if (lv && lv.color) {
        g.fillStyle = lv.color;
        g.fillRect(gutter + col * cw, y, n * cw, Math.max(ch - (ch > 3 ? 1 : 0), 1));
      }
      col += n;
    }
    if (ch >= 8) {
      const page = heat.pages[r];
      g.fillStyle = '#1b1f24';
      g.fillText(`${TYPE_MARK[page.type] || '?'} ${page.index >= 0 ? '#' + page.index : ''} ${page.type}`.slice(0, 18), 4, y + ch / 2);
    }
  });
  const tip = el('div', { class: 'tip', hidden: true });
  const cell = (event) => {
    const box = canvas.getBoundingClientRect();
    const col = Math.floor((event.clientX - box.left - gutter) / cw);
    const r = Math.floor((event.clientY - box.top - top) / ch);
    if (col < 0 || col >= cols || r < 0 || r >= rows) return null;
    return { col, r };
  };
  canvas.addEventListener('mousemove', (event) => {
    const at = cell(event);
    if (!at) { tip.hidden = true; return; }
    const page = heat.pages[at.r];
    const letter = letterAt(heat.rows[at.r], at.col);
    const turn = t.turns[at.col];
    tip.textContent = `${page.id} (${page.type})\nturn ${turn ? turn.turn : '?'}: ${(LEVELS[letter] || {}).name || letter}`;
    tip.style.left = `${event.clientX + 12}px`;
    tip.style.top = `${event.clientY + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
  canvas.addEventListener('click', (event) => {
    const at = cell(event);
    if (at) location.hash = `#/s/${enc(t.id)}/p/${enc(heat.pages[at.r].id)}`;
  });
  wrap.append(canvas, tip);
  return wrap;
}

function letterAt(row, col) {
  let at = 0;
  for (const [, letter, count] of row.matchAll(/([A-Z.?-])(\d+)/g)) {
    at += Number(count);
    if (col < at) return letter;
  }
  return '?';
}

function turnsWithEvents(t) {
  return t.turns.map((turn) => turn.event || '');
}

function tokenChart(turns) {
  const width = Math.min(1200, Math.max(400, turns.length * 6));
  const height = 160;
  const canvas = el('canvas', { class: 'chart', id: 'tokens' });
  const scale = window.devicePixelRatio || 1;
  canvas.width = width * scale;
  canvas.height = height * scale;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const g = canvas.getContext('2d');
  g.scale(scale, scale);
  const top = Math.max(1, ...turns.map((t) => Math.max(t.budget || 0, t.forwarded || 0, t.received || 0)));
  const x = (i) => 40 + (i * (width - 50)) / Math.max(turns.length, 1);
  const y = (v) => height - 20 - (v * (height - 30)) / top;
  const bar = Math.max(1, (width - 50) / Math.max(turns.length, 1) - 1);
  turns.forEach((t, i) => {
    g.fillStyle = '#c9d7e6';
    g.fillRect(x(i), y(t.received), bar, height - 20 - y(t.received));
    g.fillStyle = '#0b5cad';
    g.fillRect(x(i), y(t.forwarded), bar, height - 20 - y(t.forwarded));
  });
  g.strokeStyle = '#b42318';
  g.beginPath();
  turns.forEach((t, i) => { const yy = y(t.budget); if (i) g.lineTo(x(i) + bar, yy); else g.moveTo(x(i), yy); });
  g.stroke();
  g.fillStyle = '#5b6570';
  g.font = '11px system-ui, sans-serif';
  g.fillText(num(top), 2, 12);
  g.fillText('0', 2, height - 22);
  return el('div', {}, canvas, el('div', { class: 'legend' },
    el('span', {}, el('i', { class: 'lv-C' }), 'forwarded'),
    el('span', {}, el('i', { class: 'lv-P' }), 'received (as the agent sent it)'),
    el('span', {}, '— budget (red line)')));
}

function timelineTable(t) {
  const keptPrompts = new Set(t.turns.filter((r) => r.prompt).slice(-t.retention.prompts).map((r) => r.prompt));
  const recallsAt = group(t.recalls);
  const row = (r, i) => {
    const faults = (r.events || []).filter((e) => e.type === 'fault');
    const wb = r.writeback || { committed: [], rejected: {} };
    const rejected = Object.entries(wb.rejected || {});
    const prefix = r.prefix || {};
    return el('tr', { class: r.event ? 'event' : null, 'data-turn': r.turn },
      td(num(r.turn), true),
      td(when(r.at)),
      td(r.event ? el('span', { class: 'pill ev' }, r.event) : ''),
      td(`${num(r.messages.received)} → ${num(r.messages.forwarded)}`, true),
      td(num(r.received), true),
      td(num(r.forwarded), true),
      td(`${num(r.budget)} (${pct(r.forwarded, r.budget)})`, true),
      td(i === 0 ? '–' : `${num(prefix.messages)} msgs, ≈${num(prefix.tokens)} tok (${pct(prefix.bytes, prefix.of_bytes)})`, true),
      td([r.replanned ? el('span', { class: 'pill' }, 're-planned') : null, r.decisions ? `${num(r.decisions)} decisions` : '']),
      td(faults.map((e) => el('span', { class: 'pill bad', title: e.detail || '' }, e.kind))),
      td((recallsAt.get(i) || []).map((d) => el('span', { class: d.code === 'ok' ? 'pill ok' : 'pill bad' }, d.code))),
      td([wb.committed.length ? el('span', { class: 'pill ok' }, `${wb.committed.length} committed`) : null,
        rejected.map(([code, n]) => el('span', { class: 'pill bad' }, `${code} ×${n}`))]),
      td(r.prompt && keptPrompts.has(r.prompt) ? link(`#/s/${enc(t.id)}/t/${enc(r.prompt)}`, 'prompt') : el('span', { class: 'muted' }, '–')),
    );
  };
  return capped(t.turns,
    ['turn#', 'time', 'event', 'messages#', 'tokens received#', 'forwarded#', 'budget#', 'prefix reused#', 'assembly', 'faults', 'recalls', 'write-back', 'prompt'],
    row, 'timeline');
}

function group(items) {
  const out = new Map();
  for (const item of items) {
    const list = out.get(item.turn_index) || [];
    list.push(item);
    out.set(item.turn_index, list);
  }
  return out;
}

function turnLabel(t, index) {
  const turn = t.turns[index];
  return turn ? num(turn.turn) : index < 0 ? 'before the kept turns' : 'latest';
}

function eventsTable(t) {
  if (!t.events.length) return el('p', { class: 'muted' }, 'None.');
  const row = (e) => el('tr', { class: e.kind === 'lifecycle' ? 'event' : null },
    td(turnLabel(t, e.turn_index), true),
    td(el('span', { class: e.kind === 'lifecycle' ? 'pill ev' : e.type === 'fault' ? 'pill bad' : 'pill' }, e.kind === 'lifecycle' ? e.event : e.kind)),
    td(e.kind === 'lifecycle' ? (e.harness || '') : (e.type || '')),
    td(e.page_id ? pageLink(t.id, e.page_id) : ''),
    td(el('span', { class: 'mono' }, e.evidence || e.detail || e.unreadable || '')),
  );
  return capped(t.events, ['turn#', 'event or fault', 'harness or type', 'page', 'evidence'], row, 'events');
}

function recallsTable(t) {
  if (!t.recalls.length) return el('p', { class: 'muted' }, 'None.');
  const row = (d) => el('tr', {},
    td(turnLabel(t, d.turn_index), true),
    td(el('span', { class: d.code === 'ok' ? 'pill ok' : 'pill bad' }, d.code)),
    td((d.pages || []).map((p) => [pageLink(t.id, p), ' '])),
    td(num(d.tokens), true),
  );
  return capped(t.recalls, ['turn#', 'reason code', 'pages', 'tokens#'], row, 'recalls');
}

function journalTable(t) {
  const rows = [];
  t.turns.forEach((r, i) => {
    const wb = r.writeback || { committed: [], rejected: {} };
    for (const c of wb.committed || []) rows.push({ i, status: 'committed', code: '', ...c, count: 1 });
    for (const [code, count] of Object.entries(wb.rejected || {})) rows.push({ i, status: 'rejected', code, count });
  });
  if (!rows.length) return el('p', { class: 'muted' }, 'No write-back in the kept turns.');
  const row = (j) => el('tr', {},
    td(turnLabel(t, j.i), true),
    td(el('span', { class: j.status === 'committed' ? 'pill ok' : 'pill bad' }, j.status)),
    td(j.code),
    td(j.op || ''),
    td(el('span', { class: 'mono' }, j.slot || '')),
    td(j.type || ''),
    td(j.scope || ''),
    td(j.page_id ? pageLink(t.id, j.page_id) : ''),
    td(num(j.count), true),
  );
  return capped(rows, ['turn#', 'status', 'code', 'op', 'slot', 'type', 'scope', 'from page', 'updates#'], row, 'journal');
}

async function pageView(sessionId, pageId) {
  crumbs(link(`#/s/${enc(sessionId)}`, sessionId, 'mono'), el('span', { class: 'mono' }, pageId));
  const p = await api(`/v1/clawvm/sessions/${enc(sessionId)}/pages/${enc(pageId)}`);
  const now = p.in_table ? p.in_table.level : 'none';
  const prov = p.provenance;
  const fields = el('dl', { class: 'fields' }, [
    ['id', p.id], ['type', p.type], ['scope', p.scope], ['pin', p.pin], ['floor', p.floor],
    ['level in the last prompt', p.in_table ? now : 'not in the session\'s table'], ['version', p.version],
    ['provenance', `${prov.role}, message #${prov.message_index}`
      + (prov.tool_name ? `, tool ${prov.tool_name}` : '') + (prov.tool_call_id ? ` (${prov.tool_call_id})` : '')],
    ['parent', prov.parent_id || '–'],
  ].map(([k, v]) => [el('dt', {}, k), el('dd', { class: k === 'id' ? 'mono' : null }, String(v))]).flat());
  const reprs = el('div', { class: 'reprs', id: 'representations' }, ['full', 'compressed', 'structured', 'pointer'].map((level) => {
    const r = p.representations[level];
    const calls = (r.tool_calls || []).map((c) => `\n→ ${c.function.name}(${c.function.arguments})`).join('');
    return el('div', { class: level === now ? 'repr current' : 'repr', 'data-level': level },
      el('h3', {}, el('span', {}, level), el('span', { class: 'muted' }, `${num(r.tokens)} tokens`)),
      el('pre', {}, (r.text || '') + calls));
  }));
  const history = el('div', { class: 'history', title: 'level at each kept turn' }, p.history.map((h) => {
    const lv = LEVELS[h.level] || LEVELS['?'];
    return el('span', { class: lv.css, title: `turn ${h.turn}: ${lv.name}` });
  }));
  const decisions = p.decisions.length
    ? capped(p.decisions, ['turn#', 'action', 'from', 'to', 'reason code'], (d) => el('tr', {},
      td(d.turn === undefined || d.turn === null ? '' : num(d.turn), true),
      td(d.kind === 'recall' ? 'recall' : d.action || ''),
      td(d.from || ''), td(d.to || ''),
      td(el('span', { class: 'pill' }, d.reason || d.code || ''))), 'decisions')
    : el('p', { class: 'muted' }, 'No decision recorded about this page.');
  show(el('h1', {}, 'Page ', el('span', { class: 'mono' }, p.id)), fields,
    el('h2', {}, 'Representations'), reprs,
    el('h2', {}, 'Level at each kept turn'), history, heatLegend('one square per kept request, oldest first'),
    el('h2', {}, 'Decisions'), decisions);
}

function partText(part) {
  if (!part || typeof part !== 'object') return String(part);
  if (typeof part.text === 'string') return part.text;
  if (part.type === 'tool_use') return `→ ${part.name || '?'}(${JSON.stringify(part.input || {})})  [${part.id || ''}]`;
  if (part.type === 'tool_result') {
    const inner = Array.isArray(part.content) ? part.content.map(partText).join('\n') : String(part.content || '');
    return `result of ${part.tool_use_id || '?'}:\n${inner}`;
  }
  if (part.type === 'thinking') return `[thinking] ${part.thinking || ''}`;
  return `[${part.type || 'part'}]`;
}

function messageView(m) {
  if (!m || typeof m !== 'object') return el('div', { class: 'msg' }, el('pre', {}, JSON.stringify(m)));
  // Chat Completions messages, Anthropic Messages items and Responses items alike: the prompt is
  // kept as forwarded, so each format's own shapes are read here.
  const role = String(m.role || (m.type === 'clawvm.system' ? 'system' : m.type) || '?');
  const head = el('div', { class: 'head' }, el('span', { class: 'role' }, role),
    m.name ? el('span', { class: 'mono' }, m.name) : null,
    m.tool_call_id ? el('span', { class: 'mono muted' }, `result of ${m.tool_call_id}`) : null);
  let text = '';
  if (typeof m.content === 'string') text = m.content;
  else if (Array.isArray(m.content)) text = m.content.map(partText).join('\n');
  else if (typeof m.output === 'string') text = m.output;
  if (m.type === 'function_call') text = `→ ${m.name || '?'}(${m.arguments || ''})  [${m.call_id || ''}]`;
  for (const call of m.tool_calls || []) {
    const fn = call.function || {};
    text += `${text ? '\n' : ''}→ ${fn.name || '?'}(${fn.arguments || ''})  [${call.id || ''}]`;
  }
  return el('div', { class: `msg ${role}` }, head, el('pre', {}, text));
}

async function promptView(sessionId, promptId) {
  crumbs(link(`#/s/${enc(sessionId)}`, sessionId, 'mono'), `prompt ${promptId}`);
  const p = await api(`/v1/clawvm/sessions/${enc(sessionId)}/prompts/${enc(promptId)}`);
  let same = 0;
  let dropped = 0;
  let added = 0;
  for (const op of p.diff) {
    if (op.op === 'equal') same += op.received[1] - op.received[0];
    else {
      dropped += op.received[1] - op.received[0];
      added += op.forwarded[1] - op.forwarded[0];
    }
  }
  const diff = el('div', { class: 'diff', id: 'diff' },
    el('div', { class: 'colhead' }, `What the agent sent (${p.received.length} messages)`),
    el('div', { class: 'colhead' }, `What the model saw (${p.forwarded.length} messages)`),
    p.diff.map((op) => diffBlock(op, p)));
  const forwarded = el('div', { id: 'forwarded' }, p.forwarded.map(messageView));
  show(el('h1', {}, 'Prompt ', el('span', { class: 'mono' }, promptId)),
    el('div', { class: 'cards' }, card('messages forwarded as sent', num(same)),
      card('the agent\'s, not forwarded as sent', num(dropped)),
      card('the gateway\'s in their place (degraded pages, stubs, retained state)', num(added))),
    el('h2', {}, 'Diff against what the agent sent'), diff,
    el('h2', {}, 'The prompt as the model saw it'), forwarded);
}

function diffBlock(op, p) {
  const left = p.received.slice(op.received[0], op.received[1]);
  const right = p.forwarded.slice(op.forwarded[0], op.forwarded[1]);
  if (op.op === 'equal') {
    return el('details', { class: 'equal' }, el('summary', {}, `${left.length} message${left.length === 1 ? '' : 's'} forwarded as sent`),
      left.map(messageView));
  }
  const side = (items, cls, empty) => el('div', { class: `side ${cls}` }, items.length ? items.map(messageView) : el('div', { class: 'gap' }, empty));
  if (left.length === right.length) { // one for one: each message beside what it became
    return left.map((message, i) => [side([message], 'del', ''), side([right[i]], 'ins', '')]);
  }
  return [side(left, 'del', 'added by the gateway'), side(right, 'ins', 'paged out: not in the prompt')];
}

// ------------------------------------------------------------------ routing

async function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  document.getElementById('signout').hidden = !key();
  try {
    if (parts[0] === 's' && parts[1] && parts[2] === 'p' && parts[3]) await pageView(parts[1], parts[3]);
    else if (parts[0] === 's' && parts[1] && parts[2] === 't' && parts[3]) await promptView(parts[1], parts[3]);
    else if (parts[0] === 's' && parts[1]) await sessionView(parts[1]);
    else await sessionsView();
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = location.hash || '#/';
  } catch (error) {
    if (error instanceof AuthError) { showLogin(key() ? error.message : ''); return; }
    show(el('h1', {}, 'Not available'), el('p', { class: 'error', role: 'alert' }, error.message));
    document.body.dataset.ready = location.hash || '#/';
  }
}

document.getElementById('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = document.getElementById('key').value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_STORE, value);
  document.getElementById('key').value = '';
  route();
});
document.getElementById('signout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORE);
  location.hash = '#/';
  showLogin('');
});
window.addEventListener('hashchange', route);
route();
