// The /dashboard page: reads /stats every REFRESH_MS and draws visits per minute as SVG bars.
// No library and no build step, so it works on an offline network. Served from static/.
'use strict';
const REFRESH_MS = 3000;
const SVG = 'http://www.w3.org/2000/svg';
// On the public site the token comes as /dashboard#<token>: a fragment never reaches the server.
const token = decodeURIComponent(location.hash.slice(1));

function show(id, text) {
  document.getElementById(id).textContent = text;
}

function svg(parent, name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function drawChart(visits) {
  const chart = document.getElementById('chart');
  chart.replaceChildren();
  const series = visits.per_minute;
  const left = 40, top = 10, width = 590, height = 180;
  const highest = Math.max(1, ...series);
  const step = width / series.length;
  svg(chart, 'line', {x1: left, y1: top + height, x2: left + width, y2: top + height, class: 'axis'});
  svg(chart, 'text', {x: left - 6, y: top + 10, class: 'label end'}, highest);
  svg(chart, 'text', {x: left - 6, y: top + height, class: 'label end'}, 0);
  svg(chart, 'text', {x: left, y: top + height + 18, class: 'label'}, '60 min ago');
  svg(chart, 'text', {x: left + width, y: top + height + 18, class: 'label end'}, 'now');
  series.forEach((count, i) => {
    const barHeight = count / highest * height;
    const bar = svg(chart, 'rect', {
      x: left + i * step + 1, y: top + height - barHeight, width: step - 2, height: barHeight,
      class: 'bar', 'data-visits': count});
    const minute = new Date((visits.per_minute_start + i * 60) * 1000);
    svg(bar, 'title', {}, `${minute.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})}: ${count} visits`);
  });
}

function render(stats) {
  const r = stats.requests, ms = stats.response_ms;
  show('visits', stats.visits.total);
  show('visits-hour', stats.visits.last_hour);
  show('requests', `${r['2xx']} / ${r['4xx']} / ${r['5xx']}`);
  show('in-flight', stats.in_flight);
  show('threads', `${stats.threads.busy} / ${stats.threads.idle}`);
  show('latency', ms.samples ? `${ms.p50} / ${ms.p90} / ${ms.p99}` : 'no requests yet');
  show('probes', stats.health_probes);
  const up = stats.uptime_seconds;
  show('uptime', up < 3600 ? `${Math.floor(up / 60)} min ${Math.floor(up % 60)} s`
                           : `${Math.floor(up / 3600)} h ${Math.floor(up % 3600 / 60)} min`);
  drawChart(stats.visits);
}

async function refresh() {
  try {
    const response = await fetch('/stats', {
      cache: 'no-store', headers: token ? {Authorization: `Bearer ${token}`} : {}});
    if (!response.ok) throw new Error(`/stats answered ${response.status}` +
                                      (response.status === 401 ? ': open /dashboard#<token>' : ''));
    render(await response.json());
    show('status', `Updated ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000} s`);
    document.body.classList.remove('stale');
  } catch (error) {
    show('status', `Not updated: ${error.message}`);
    document.body.classList.add('stale');
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
