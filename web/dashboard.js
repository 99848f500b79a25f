// The relay dashboard: one `stats` event a second from /stats/events
// (counters, not rates), turned into rates over the last few seconds and
// drawn as a table and two small SVG charts of the last minutes. The
// stream opens with a `history` event (the relay's last two minutes of
// totals), so the charts start filled. The header comes from /healthz
// (version, listen address, tokens, TLS). No dependencies, no network
// beyond the relay.

/** Seconds the charts show. */
export const HISTORY = 120;
/** Rates are averaged over this many seconds (keyframes come in bursts). */
export const WINDOW = 5;

const params = new URLSearchParams(location.search);
const token = params.get('token');
const $ = (id) => document.getElementById(id);

/**
 * Totals over time, oldest first: {t (ms of relay uptime), bytesIn,
 * bytesOut, pictures, receivers, sse, sources}; from the history event,
 * then one per snapshot.
 */
const samples = [];
/** Per channel: its counters at each snapshot of the last WINDOW seconds. */
const channelSamples = new Map();

/** What the page shows now, for tests: the last snapshot, the rates, the relay's health. */
window.dashboard = { snapshot: null, rates: {}, channelRates: {}, updates: 0, history: 0, health: null };

function mb(bytesPerSec) {
  return bytesPerSec / 1e6;
}
function fmt(x, digits = 2) {
  return Number.isFinite(x) ? x.toFixed(digits) : '–';
}
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

/**
 * The rate of counter `key` per second between the oldest entry of `list`
 * that is at most `window` seconds older than the newest, and the newest
 * (entries: objects with `t` in ms). NaN with fewer than two entries.
 */
export function windowRate(list, key, window = WINDOW) {
  if (list.length < 2) return NaN;
  const last = list[list.length - 1];
  let first = list[list.length - 2];
  for (let i = list.length - 2; i >= 0 && last.t - list[i].t <= window * 1000 + 100; i--) first = list[i];
  const dt = (last.t - first.t) / 1000;
  return dt > 0 ? (last[key] - first[key]) / dt : NaN;
}

/**
 * A channel's rates over `list` (its snapshots, {t, pictures_in,
 * frames_in, bytes_in, bytes_out}): fps counts pictures only, not signal
 * or audio messages (those are in `messages`).
 */
export function channelRates(list, window = WINDOW) {
  return {
    fps: windowRate(list, 'pictures_in', window),
    messages: windowRate(list, 'frames_in', window),
    inMBs: mb(windowRate(list, 'bytes_in', window)),
    outMBs: mb(windowRate(list, 'bytes_out', window)),
  };
}

/** Adds a sample of totals (a relay restart, seen as time going back, starts over). */
function addSample(s) {
  const last = samples[samples.length - 1];
  if (last && s.t < last.t) samples.length = 0;
  else if (last && s.t === last.t) return;
  samples.push(s);
  while (samples.length > HISTORY + WINDOW + 1) samples.shift();
}

function totals(s, inMBs, outMBs) {
  const d = s.dashboards ?? 1;
  const cards = [
    [`connections (${d} dashboard${d === 1 ? '' : 's'} incl. this one)`, s.connections, 'connections'],
    ['sources', s.sources],
    ['receivers', s.receivers],
    ['SSE clients', s.sse_clients],
    ['channels', s.channels_total],
    [`MB/s in (${WINDOW} s avg)`, fmt(inMBs), 'MB/s in'],
    [`MB/s out (${WINDOW} s avg)`, fmt(outMBs), 'MB/s out'],
    ['catch-ups', s.catchups],
    ['slow skips', s.slow_skips],
    ['memory', bytes(s.memory_bytes)],
    ['RSS', s.rss_bytes == null ? '–' : bytes(s.rss_bytes)],
    ['refused', s.refused],
  ];
  $('totals').replaceChildren(
    ...cards.map(([label, v, key]) => {
      const c = el('div', { class: 'card', 'data-total': key ?? label });
      c.append(el('b', {}, String(v)), el('span', {}, label));
      return c;
    }),
  );
}

function row(ch, r) {
  const tr = el('tr', { 'data-channel': ch.name });
  const link = el('a', { href: '/?channel=' + encodeURIComponent(ch.name) + (token ? '&token=' + encodeURIComponent(token) : '') }, ch.name);
  const name = el('td');
  name.append(link);
  tr.append(
    name,
    el('td', { class: ch.source ? 'on' : 'off', 'data-k': 'source' }, ch.source ? 'live' : 'none'),
    el('td', { 'data-k': 'receivers' }, String(ch.receivers)),
    el('td', { 'data-k': 'sse_clients' }, String(ch.sse_clients)),
    el('td', { 'data-k': 'fps' }, fmt(r.fps, 1)),
    el('td', { 'data-k': 'mbs_in' }, fmt(r.inMBs)),
    el('td', { 'data-k': 'mbs_out' }, fmt(r.outMBs)),
    el('td', { 'data-k': 'frames_in' }, String(ch.frames_in)),
    el('td', { 'data-k': 'pictures_in' }, String(ch.pictures_in ?? '–')),
    el('td', { 'data-k': 'catchups' }, String(ch.catchups)),
    el('td', { 'data-k': 'slow_skips' }, String(ch.slow_skips)),
    el('td', { 'data-k': 'cached_bytes' }, bytes(ch.cached_bytes)),
  );
  return tr;
}

/**
 * Line styles, so equal series stay visible: the first is wide and solid,
 * drawn first; the others are narrower, dashed differently, on top and
 * 2 px higher each.
 */
export const LINE_STYLES = [
  { width: 3, dash: '' },
  { width: 1.5, dash: '6 3' },
  { width: 1.5, dash: '2 2' },
];

/**
 * Draws series ({values, color}; values oldest first, one a second, the
 * last one now) as polylines into an SVG; with fewer than two points it
 * says it is collecting.
 */
function chart(svg, series) {
  const W = svg.width.baseVal.value;
  const H = svg.height.baseVal.value;
  const pad = 32;
  const n = HISTORY;
  const ns = 'http://www.w3.org/2000/svg';
  const max = Math.max(1e-9, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  svg.replaceChildren();
  const axis = document.createElementNS(ns, 'path');
  axis.setAttribute('d', `M${pad},4 V${H - 14} H${W - 4}`);
  axis.setAttribute('stroke', '#999');
  axis.setAttribute('fill', 'none');
  svg.append(axis);
  const label = (x, y, text, anchor = 'start') => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', x);
    t.setAttribute('y', y);
    t.setAttribute('font-size', '10');
    t.setAttribute('fill', '#555');
    t.setAttribute('text-anchor', anchor);
    t.textContent = text;
    svg.append(t);
    return t;
  };
  label(pad - 2, 12, max >= 10 ? max.toFixed(0) : max.toPrecision(2), 'end');
  label(pad - 2, H - 14, '0', 'end');
  label(W - 4, H - 2, 'now', 'end');
  label(pad, H - 2, `-${n / 60} min`);
  const points = series[0]?.values.length ?? 0;
  if (points < 2) {
    label(W / 2, H / 2, 'collecting… (the relay has no history yet)', 'middle').setAttribute('data-collecting', '1');
    return;
  }
  series.forEach(({ values, color }, i) => {
    const style = LINE_STYLES[i % LINE_STYLES.length];
    const off = n - values.length;
    const pts = [];
    values.forEach((v, j) => {
      if (!Number.isFinite(v)) return;
      const x = pad + ((off + j) / (n - 1)) * (W - pad - 4);
      // Each later series sits 2 px higher: equal values stay two lines.
      const y = H - 14 - (v / max) * (H - 20) - i * 2;
      pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', color);
    line.setAttribute('stroke-width', String(style.width));
    if (style.dash) line.setAttribute('stroke-dasharray', style.dash);
    line.setAttribute('data-series', String(i));
    svg.append(line);
  });
}

/** The rate of `key` at every sample (over the WINDOW seconds before it), the last HISTORY. */
function rateSeries(key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    out.push(mb(windowRate(samples.slice(Math.max(0, i - WINDOW - 1), i + 1), key)));
  }
  return out.slice(-HISTORY);
}

function drawCharts() {
  const gauge = (k) => samples.slice(1).map((s) => s[k]).slice(-HISTORY);
  chart($('chart-throughput'), [
    { values: rateSeries('bytesIn'), color: '#2563eb' },
    { values: rateSeries('bytesOut'), color: '#16a34a' },
  ]);
  chart($('chart-connections'), [
    { values: gauge('receivers'), color: '#9333ea' },
    { values: gauge('sse'), color: '#ea580c' },
    { values: gauge('sources'), color: '#0891b2' },
  ]);
}

/** The `history` event: the relay's last samples of totals, oldest first. */
function onHistory(list) {
  samples.length = 0;
  for (const h of list) {
    addSample({ t: h.uptime_ms, bytesIn: h.bytes_in, bytesOut: h.bytes_out, pictures: h.pictures_in, receivers: h.receivers, sse: h.sse_clients, sources: h.sources });
  }
  window.dashboard.history = list.length;
  drawCharts();
}

function update(s) {
  addSample({ t: s.uptime_ms, bytesIn: s.bytes_in, bytesOut: s.bytes_out, pictures: s.pictures_in, receivers: s.receivers, sse: s.sse_clients, sources: s.sources });
  const inMBs = mb(windowRate(samples, 'bytesIn'));
  const outMBs = mb(windowRate(samples, 'bytesOut'));
  totals(s, inMBs, outMBs);
  $('uptime').textContent = 'up ' + Math.round(s.uptime_ms / 1000) + ' s';
  const rates = {};
  const seen = new Set();
  const rows = s.channels.map((ch) => {
    seen.add(ch.name);
    const list = channelSamples.get(ch.name) ?? [];
    const last = list[list.length - 1];
    if (last && s.uptime_ms < last.t) list.length = 0;
    list.push({ ...ch, t: s.uptime_ms });
    while (list.length > WINDOW + 2) list.shift();
    channelSamples.set(ch.name, list);
    rates[ch.name] = channelRates(list);
    return row(ch, rates[ch.name]);
  });
  for (const name of channelSamples.keys()) if (!seen.has(name)) channelSamples.delete(name);
  $('channels').tBodies[0].replaceChildren(...rows);
  drawCharts();
  window.dashboard = { ...window.dashboard, snapshot: s, rates: { inMBs, outMBs }, channelRates: rates, updates: window.dashboard.updates + 1 };
}

/** The header's relay facts from /healthz: version, listen address, tokens, TLS. */
async function showHealth() {
  try {
    const r = await fetch('/healthz', { cache: 'no-store' });
    const h = await r.json();
    window.dashboard.health = h;
    const onOff = (v) => (v ? 'on' : 'off');
    $('relay-info').textContent = [
      h.version ? `v${h.version}` : null,
      h.addr ? `listening on ${h.addr}` : null,
      `tokens ${onOff(h.tokens)}`,
      `TLS ${onOff(h.tls)}`,
    ]
      .filter(Boolean)
      .join(' · ');
  } catch (e) {
    $('relay-info').textContent = `relay facts unavailable: ${e.message}`;
  }
}

function connect() {
  const url = '/stats/events' + (token ? '?token=' + encodeURIComponent(token) : '');
  const es = new EventSource(url);
  const status = $('status');
  es.onopen = () => {
    status.textContent = 'live';
    status.className = 'open';
    showHealth();
  };
  es.onerror = () => {
    status.textContent = 'reconnecting';
    status.className = 'closed';
  };
  es.addEventListener('history', (e) => {
    try {
      onHistory(JSON.parse(e.data));
    } catch (err) {
      console.error(err);
    }
  });
  es.addEventListener('stats', (e) => {
    try {
      update(JSON.parse(e.data));
    } catch (err) {
      console.error(err);
    }
  });
}

if (document.getElementById('totals')) {
  drawCharts();
  connect();
}
