// The relay dashboard: one `stats` event a second from /stats/events
// (counters, not rates), turned into rates from consecutive snapshots and
// drawn as a table and two small SVG charts of the last minutes. No
// dependencies, no network beyond the relay.

const HISTORY = 120; // seconds kept for the charts
const params = new URLSearchParams(location.search);
const token = params.get('token');
const $ = (id) => document.getElementById(id);

const history = [];       // {t, inMBs, outMBs, receivers, sse, sources}
let previous = null;      // the last snapshot
const channelPrev = new Map();

/** What the page shows now, for tests: the last snapshot and the rates. */
window.dashboard = { snapshot: null, rates: {}, updates: 0 };

function mb(bytesPerSec) { return bytesPerSec / 1e6; }
function fmt(x, digits = 2) { return Number.isFinite(x) ? x.toFixed(digits) : '–'; }
function bytes(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
  if (n >= 1e6) return (n / 1e6).toFixed(2) + ' MB';
  if (n >= 1e3) return (n / 1e3).toFixed(1) + ' kB';
  return n + ' B';
}
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function totals(s, inMBs, outMBs) {
  const cards = [
    ['connections', s.connections], ['sources', s.sources], ['receivers', s.receivers],
    ['SSE clients', s.sse_clients], ['channels', s.channels_total],
    ['MB/s in', fmt(inMBs)], ['MB/s out', fmt(outMBs)],
    ['catch-ups', s.catchups], ['slow skips', s.slow_skips],
    ['memory', bytes(s.memory_bytes)],
    ['RSS', s.rss_bytes == null ? '–' : bytes(s.rss_bytes)], ['refused', s.refused],
  ];
  const box = $('totals');
  box.replaceChildren(...cards.map(([label, v]) => {
    const c = el('div', { class: 'card', 'data-total': label });
    c.append(el('b', {}, String(v)), el('span', {}, label));
    return c;
  }));
}

function row(ch, dt) {
  const p = channelPrev.get(ch.name);
  const rate = (k) => (p && dt > 0 ? (ch[k] - p[k]) / dt : NaN);
  const tr = el('tr', { 'data-channel': ch.name });
  const link = el('a', { href: '/?channel=' + encodeURIComponent(ch.name) + (token ? '&token=' + encodeURIComponent(token) : '') }, ch.name);
  const name = el('td'); name.append(link);
  tr.append(
    name,
    el('td', { class: ch.source ? 'on' : 'off', 'data-k': 'source' }, ch.source ? 'live' : 'none'),
    el('td', { 'data-k': 'receivers' }, String(ch.receivers)),
    el('td', { 'data-k': 'sse_clients' }, String(ch.sse_clients)),
    el('td', { 'data-k': 'fps' }, fmt(rate('frames_in'), 1)),
    el('td', { 'data-k': 'mbs_in' }, fmt(mb(rate('bytes_in')))),
    el('td', { 'data-k': 'mbs_out' }, fmt(mb(rate('bytes_out')))),
    el('td', { 'data-k': 'frames_in' }, String(ch.frames_in)),
    el('td', { 'data-k': 'catchups' }, String(ch.catchups)),
    el('td', { 'data-k': 'slow_skips' }, String(ch.slow_skips)),
    el('td', { 'data-k': 'cached_bytes' }, bytes(ch.cached_bytes)),
  );
  return tr;
}

/** Draws series (arrays of numbers, same length) as polylines into an SVG. */
function chart(svg, series, colors) {
  const W = svg.width.baseVal.value, H = svg.height.baseVal.value, pad = 32;
  const max = Math.max(1e-9, ...series.flat());
  const n = HISTORY;
  const ns = 'http://www.w3.org/2000/svg';
  svg.replaceChildren();
  const axis = document.createElementNS(ns, 'path');
  axis.setAttribute('d', `M${pad},4 V${H - 14} H${W - 4}`);
  axis.setAttribute('stroke', '#999'); axis.setAttribute('fill', 'none');
  svg.append(axis);
  const label = (x, y, text, anchor = 'start') => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('font-size', '10');
    t.setAttribute('fill', '#555'); t.setAttribute('text-anchor', anchor);
    t.textContent = text; svg.append(t);
  };
  label(pad - 2, 12, max >= 10 ? max.toFixed(0) : max.toPrecision(2), 'end');
  label(pad - 2, H - 14, '0', 'end');
  label(W - 4, H - 2, 'now', 'end');
  label(pad, H - 2, `-${n / 60} min`);
  series.forEach((values, i) => {
    const off = n - values.length;
    const pts = values.map((v, j) => {
      const x = pad + ((off + j) / (n - 1)) * (W - pad - 4);
      const y = (H - 14) - (v / max) * (H - 20);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.join(' '));
    line.setAttribute('fill', 'none'); line.setAttribute('stroke', colors[i]);
    line.setAttribute('stroke-width', '1.5');
    svg.append(line);
  });
}

function update(s) {
  const dt = previous ? (s.uptime_ms - previous.uptime_ms) / 1000 : 0;
  const inMBs = previous && dt > 0 ? mb((s.bytes_in - previous.bytes_in) / dt) : 0;
  const outMBs = previous && dt > 0 ? mb((s.bytes_out - previous.bytes_out) / dt) : 0;
  totals(s, inMBs, outMBs);
  $('uptime').textContent = 'up ' + Math.round(s.uptime_ms / 1000) + ' s';
  $('channels').tBodies[0].replaceChildren(...s.channels.map((ch) => row(ch, dt)));
  channelPrev.clear();
  for (const ch of s.channels) channelPrev.set(ch.name, ch);
  if (previous) {
    history.push({ inMBs, outMBs, receivers: s.receivers, sse: s.sse_clients, sources: s.sources });
    if (history.length > HISTORY) history.shift();
  }
  chart($('chart-throughput'), [history.map((h) => h.inMBs), history.map((h) => h.outMBs)], ['#2563eb', '#16a34a']);
  chart($('chart-connections'), [history.map((h) => h.receivers), history.map((h) => h.sse), history.map((h) => h.sources)],
    ['#9333ea', '#ea580c', '#0891b2']);
  previous = s;
  window.dashboard = { snapshot: s, rates: { inMBs, outMBs }, updates: window.dashboard.updates + 1 };
}

function connect() {
  const url = '/stats/events' + (token ? '?token=' + encodeURIComponent(token) : '');
  const es = new EventSource(url);
  const status = $('status');
  es.onopen = () => { status.textContent = 'live'; status.className = 'open'; };
  es.onerror = () => { status.textContent = 'reconnecting'; status.className = 'closed'; };
  es.addEventListener('stats', (e) => {
    try { update(JSON.parse(e.data)); } catch (err) { console.error(err); }
  });
}

connect();
