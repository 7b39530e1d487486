// A small SVG line chart (time on x, values on y), written for this UI: a few series of
// [timeMs, value] points, a "nice" y scale with grid lines, and a legend.

import { h, svg } from './dom.js';

const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#db2777', '#65a30d'];
const HEIGHT = 180;
const PAD = { left: 56, right: 8, top: 10, bottom: 22 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= value);
  return step * power;
}

/**
 * series: [{name, points: [[tMs, v], ...]}]; format(v) labels the y axis.
 * Returns an element that scales with its container's width.
 */
export function lineChart(series, { format = String, title, testid } = {}) {
  // Drawn in about the pixels it will get, so labels keep their size on a phone.
  const WIDTH = Math.max(320, Math.min(600, window.innerWidth - 48));
  const all = series.flatMap((s) => s.points);
  const tMin = all.length ? Math.min(...all.map((p) => p[0])) : 0;
  const tMax = all.length ? Math.max(...all.map((p) => p[0])) : 1;
  const yMax = niceMax(all.length ? Math.max(...all.map((p) => p[1])) : 0);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + (tMax === tMin ? plotW : ((t - tMin) / (tMax - tMin)) * plotW);
  const y = (v) => PAD.top + plotH - (v / yMax) * plotH;

  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => [
    svg('line', { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(f * yMax), y2: y(f * yMax), class: 'grid' }),
    svg('text', { x: PAD.left - 4, y: y(f * yMax) + 4, 'text-anchor': 'end', class: 'axis' }, format(f * yMax)),
  ]);
  const seconds = Math.round((tMax - tMin) / 1000);
  const xLabels = all.length ? [
    svg('text', { x: PAD.left, y: HEIGHT - 6, class: 'axis' }, `-${seconds}s`),
    svg('text', { x: WIDTH - PAD.right, y: HEIGHT - 6, 'text-anchor': 'end', class: 'axis' }, 'now'),
  ] : [svg('text', { x: WIDTH / 2, y: HEIGHT / 2, 'text-anchor': 'middle', class: 'axis' }, 'waiting for samples…')];
  const lines = series.map((s, i) => svg('polyline', {
    points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
    fill: 'none', stroke: PALETTE[i % PALETTE.length], 'stroke-width': 2, 'data-series': s.name,
  }));
  const legend = h('div', { class: 'legend' }, series.map((s, i) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    const swatch = h('i');
    // CSSOM, not a style attribute: the page's CSP refuses inline style attributes.
    swatch.style.background = PALETTE[i % PALETTE.length];
    return h('span', null, swatch,
      `${s.name}: ${last == null ? '–' : format(last)}`);
  }));
  const chart = svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart', role: 'img',
    'aria-label': title || 'chart' }, grid, xLabels, lines);
  return h('figure', { class: 'chart-box', testid }, title ? h('figcaption', null, title) : null, chart, legend);
}

/** Keeps the last `limit` samples of a few named values. */
export class History {
  constructor(limit = 90) { this.limit = limit; this.samples = []; }
  push(t, values) {
    this.samples.push({ t, values });
    if (this.samples.length > this.limit) this.samples.shift();
  }
  series(names, labels = names) {
    return names.map((name, i) => ({
      name: labels[i],
      points: this.samples.filter((s) => s.values[name] != null).map((s) => [s.t, s.values[name]]),
    }));
  }
}
